//! Device-mapper, spoken directly: the ioctls on `/dev/mapper/control`
//! that `dmsetup` would make, for the one target cairn needs (`verity`,
//! read-only, one target per device). No new binaries on the device.
//!
//! The request buffers (`struct dm_ioctl`, 312 bytes, then one
//! `struct dm_target_spec`, 40 bytes, then the NUL-terminated table
//! parameters, padded to 8 bytes) are built and parsed by pure functions
//! with host tests; the ioctl itself is one thin call.

use std::os::fd::{AsRawFd, OwnedFd};

use cairn_runtime::sys::{self, SysError, SysResult};

/// `sizeof(struct dm_ioctl)`.
pub const IOCTL_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const SPEC_SIZE: usize = 40;
/// `DM_NAME_LEN`, `DM_UUID_LEN`, `DM_MAX_TYPE_NAME` (with the NUL).
const NAME_LEN: usize = 128;
const UUID_LEN: usize = 129;
const TYPE_LEN: usize = 16;
/// Offsets in `struct dm_ioctl`.
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
const OFF_UUID: usize = OFF_NAME + NAME_LEN;

/// The interface version this code speaks (`DM_VERSION_MAJOR` 4; minor 0:
/// the kernel accepts any minor at or below its own).
const VERSION: [u32; 3] = [4, 0, 0];

/// `DM_READONLY_FLAG`.
pub const READONLY_FLAG: u32 = 1 << 0;
/// `DM_BUFFER_FULL_FLAG` (out: the answer did not fit).
pub const BUFFER_FULL_FLAG: u32 = 1 << 8;

/// Control node and its misc device number.
pub const CONTROL: &str = "/dev/mapper/control";
const MISC_MAJOR: u32 = 10;
const MAPPER_CTRL_MINOR: u32 = 236;

/// 512-byte sectors per 4 KiB block.
pub const SECTORS_PER_BLOCK: u64 = 8;

/// The device-mapper commands cairn uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// `DM_VERSION`.
    Version = 0,
    /// `DM_DEV_CREATE`.
    Create = 3,
    /// `DM_DEV_REMOVE`.
    Remove = 4,
    /// `DM_DEV_SUSPEND` (resume without the suspend flag).
    Suspend = 6,
    /// `DM_TABLE_LOAD`.
    TableLoad = 9,
    /// `DM_LIST_VERSIONS`: the registered target types.
    ListVersions = 13,
}

impl Cmd {
    /// The ioctl name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            Cmd::Version => "DM_VERSION",
            Cmd::Create => "DM_DEV_CREATE",
            Cmd::Remove => "DM_DEV_REMOVE",
            Cmd::Suspend => "DM_DEV_SUSPEND (resume)",
            Cmd::TableLoad => "DM_TABLE_LOAD",
            Cmd::ListVersions => "DM_LIST_VERSIONS",
        }
    }

    /// `_IOWR(DM_IOCTL, cmd, struct dm_ioctl)` (the generic encoding, the
    /// same on x86_64 and aarch64).
    pub fn request(self) -> u64 {
        (3 << 30) | ((IOCTL_SIZE as u64) << 16) | (0xfd << 8) | self as u64
    }
}

/// One table line: `length` sectors from sector 0 of a `kind` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// Length in 512-byte sectors.
    pub sectors: u64,
    /// Target type ("verity").
    pub kind: &'a str,
    /// Its parameters.
    pub params: &'a str,
}

/// Why a request cannot be encoded (never sent).
fn invalid(op: &'static str, arg: &str, errno: i32) -> SysError {
    SysError { op, arg: arg.to_owned(), errno }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    if let Some(b) = buf.get_mut(at..at + 4) {
        b.copy_from_slice(&v.to_ne_bytes());
    }
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    if let Some(b) = buf.get_mut(at..at + 8) {
        b.copy_from_slice(&v.to_ne_bytes());
    }
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes)
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes)
}

/// A NUL-terminated string field of `len` bytes (with the NUL).
fn put_str(buf: &mut [u8], at: usize, len: usize, s: &str, op: &'static str) -> SysResult<()> {
    if s.len() >= len || s.as_bytes().contains(&0) {
        return Err(invalid(op, s, libc::ENAMETOOLONG));
    }
    if let Some(b) = buf.get_mut(at..at + s.len()) {
        b.copy_from_slice(s.as_bytes());
    }
    Ok(())
}

/// A request buffer: the header for device `name` (and `uuid`), `flags`,
/// and at most one target; `room` extra bytes for the kernel's answer.
/// The length is a multiple of 8, `data_size` says it, `data_start` is
/// just after the header.
pub fn request(
    cmd: Cmd,
    name: &str,
    uuid: &str,
    flags: u32,
    target: Option<&Target<'_>>,
    room: usize,
) -> SysResult<Vec<u8>> {
    let op = cmd.name();
    let body = match target {
        Some(t) => SPEC_SIZE + (t.params.len() + 1).next_multiple_of(8),
        None => 0,
    };
    let len = (IOCTL_SIZE + body + room).next_multiple_of(8);
    let data_size = u32::try_from(len).map_err(|_| invalid(op, name, libc::E2BIG))?;
    let mut buf = vec![0u8; len];
    for (k, v) in VERSION.iter().enumerate() {
        put_u32(&mut buf, 4 * k, *v);
    }
    put_u32(&mut buf, OFF_DATA_SIZE, data_size);
    put_u32(&mut buf, OFF_DATA_START, IOCTL_SIZE as u32);
    put_u32(&mut buf, OFF_FLAGS, flags);
    put_str(&mut buf, OFF_NAME, NAME_LEN, name, op)?;
    put_str(&mut buf, OFF_UUID, UUID_LEN, uuid, op)?;
    if let Some(t) = target {
        if t.params.as_bytes().contains(&0) {
            return Err(invalid(op, t.params, libc::EINVAL));
        }
        put_u32(&mut buf, OFF_TARGET_COUNT, 1);
        let spec = IOCTL_SIZE;
        put_u64(&mut buf, spec, 0); // sector_start
        put_u64(&mut buf, spec + 8, t.sectors);
        put_u32(&mut buf, spec + 20, body as u32); // next: past this spec
        put_str(&mut buf, spec + 24, TYPE_LEN, t.kind, op)?;
        if let Some(b) = buf.get_mut(spec + SPEC_SIZE..spec + SPEC_SIZE + t.params.len()) {
            b.copy_from_slice(t.params.as_bytes());
        }
    }
    Ok(buf)
}

/// What the kernel wrote back into the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Its interface version.
    pub version: [u32; 3],
    /// `data_size`, `data_start`.
    pub data_size: u32,
    /// Where its answer data starts.
    pub data_start: u32,
    /// Flags (e.g. [`BUFFER_FULL_FLAG`]).
    pub flags: u32,
    /// The device number, as `huge_encode_dev` encodes it.
    pub dev: u64,
}

/// Parse the header of an answered request.
pub fn answer(buf: &[u8]) -> Answer {
    Answer {
        version: [get_u32(buf, 0), get_u32(buf, 4), get_u32(buf, 8)],
        data_size: get_u32(buf, OFF_DATA_SIZE),
        data_start: get_u32(buf, OFF_DATA_START),
        flags: get_u32(buf, OFF_FLAGS),
        dev: get_u64(buf, OFF_DEV),
    }
}

/// `(major, minor)` of a device number as the kernel encodes it in
/// `dm_ioctl.dev` (`new_encode_dev`).
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// The target type names of a `DM_LIST_VERSIONS` answer: records of
/// `struct dm_target_versions { u32 next; u32 version[3]; char name[]; }`
/// from `data_start`, each `next` bytes after the previous (0 ends).
pub fn target_names(buf: &[u8]) -> Vec<String> {
    let a = answer(buf);
    let end = (a.data_size as usize).min(buf.len());
    let mut at = a.data_start as usize;
    let mut names = Vec::new();
    while at + 16 < end {
        let next = get_u32(buf, at) as usize;
        let name = buf.get(at + 16..end).unwrap_or(&[]);
        let name = name.split(|b| *b == 0).next().unwrap_or(&[]);
        names.push(String::from_utf8_lossy(name).into_owned());
        if next == 0 {
            break;
        }
        at += next;
    }
    names
}

/// Whether the kernel's interface version can serve ours.
pub fn compatible(kernel: [u32; 3]) -> bool {
    kernel[0] == VERSION[0]
}

/// A device-mapper device this code created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its name (`DM_DEV_CREATE`).
    pub name: String,
    /// Its block device number.
    pub major: u32,
    /// Minor: the N of `dm-N`.
    pub minor: u32,
}

impl Device {
    /// Its kernel name, `dm-N`.
    pub fn kernel_name(&self) -> String {
        format!("dm-{}", self.minor)
    }

    /// Its node under /dev.
    pub fn node(&self) -> String {
        format!("/dev/dm-{}", self.minor)
    }
}

/// An open `/dev/mapper/control`, version-checked.
pub struct Control {
    fd: OwnedFd,
}

impl Control {
    /// Open the control node (creating it if devtmpfs lacks it) and check
    /// the interface version.
    pub fn open() -> SysResult<Self> {
        if std::fs::metadata(CONTROL).is_err() {
            sys::mkdir_all("/dev/mapper", 0o755)?;
            sys::mknod_char(CONTROL, 0o600, MISC_MAJOR, MAPPER_CTRL_MINOR)?;
        }
        let fd = sys::open(CONTROL, libc::O_RDWR)?;
        let c = Control { fd };
        let mut buf = request(Cmd::Version, "", "", 0, None, 0)?;
        c.ioctl(Cmd::Version, &mut buf, CONTROL)?;
        let v = answer(&buf).version;
        if !compatible(v) {
            return Err(invalid(
                "DM_VERSION (kernel interface 4.x expected)",
                &format!("{}.{}.{}", v[0], v[1], v[2]),
                libc::ENOTSUP,
            ));
        }
        Ok(c)
    }

    fn ioctl(&self, cmd: Cmd, buf: &mut [u8], arg: &str) -> SysResult<()> {
        // SAFETY: `buf` is a writable buffer of `data_size` bytes (its
        // whole length, set by `request`), holding a `struct dm_ioctl`
        // the kernel reads and writes back within that size.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), cmd.request() as _, buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(SysError { op: cmd.name(), arg: arg.to_owned(), errno: sys::errno() });
        }
        Ok(())
    }

    /// The target types the kernel has (e.g. "verity" once dm-verity is
    /// loaded).
    pub fn target_types(&self) -> SysResult<Vec<String>> {
        let mut buf = request(Cmd::ListVersions, "", "", 0, None, 16 * 1024)?;
        self.ioctl(Cmd::ListVersions, &mut buf, "targets")?;
        if answer(&buf).flags & BUFFER_FULL_FLAG != 0 {
            return Err(invalid(Cmd::ListVersions.name(), "targets", libc::ENOBUFS));
        }
        Ok(target_names(&buf))
    }

    /// Create a read-only device `name` with one target and resume it. A
    /// failure after the create removes the device again.
    pub fn create(&self, name: &str, uuid: &str, target: &Target<'_>) -> SysResult<Device> {
        let mut buf = request(Cmd::Create, name, uuid, READONLY_FLAG, None, 0)?;
        self.ioctl(Cmd::Create, &mut buf, name)?;
        let (major, minor) = decode_dev(answer(&buf).dev);
        let dev = Device { name: name.to_owned(), major, minor };
        let loaded = request(Cmd::TableLoad, name, "", READONLY_FLAG, Some(target), 0)
            .and_then(|mut b| self.ioctl(Cmd::TableLoad, &mut b, name))
            .and_then(|()| request(Cmd::Suspend, name, "", READONLY_FLAG, None, 0))
            .and_then(|mut b| self.ioctl(Cmd::Suspend, &mut b, name));
        match loaded {
            Ok(()) => Ok(dev),
            Err(e) => {
                let _ = self.remove(name);
                Err(e)
            }
        }
    }

    /// Remove a device (`DM_DEV_REMOVE`): EBUSY while it is open/mounted.
    pub fn remove(&self, name: &str) -> SysResult<()> {
        let mut buf = request(Cmd::Remove, name, "", 0, None, 0)?;
        self.ioctl(Cmd::Remove, &mut buf, name)
    }
}

/// Make sure `/dev/dm-N` exists (devtmpfs normally creates it).
pub fn ensure_node(dev: &Device) -> SysResult<String> {
    let path = dev.node();
    if std::fs::metadata(&path).is_ok() {
        return Ok(path);
    }
    let p = sys::cstr(&path)?;
    let dev = nix::sys::stat::makedev(dev.major.into(), dev.minor.into());
    let mode = nix::sys::stat::Mode::from_bits_retain(0o600);
    match nix::sys::stat::mknod(p.as_c_str(), nix::sys::stat::SFlag::S_IFBLK, mode, dev) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(sys::err("mknod block", &path)(e)),
    }
    Ok(path)
}

/// The block major of "device-mapper" in a `/proc/devices` text.
pub fn major_in_proc_devices(text: &str) -> Option<u32> {
    let mut block = false;
    for line in text.lines() {
        let line = line.trim();
        if line == "Block devices:" {
            block = true;
            continue;
        }
        if line.ends_with(':') {
            block = false;
            continue;
        }
        if block {
            let mut w = line.split_whitespace();
            if let (Some(n), Some("device-mapper")) = (w.next(), w.next()) {
                return n.parse().ok();
            }
        }
    }
    None
}

/// The device-mapper block major on this device, if dm is present.
pub fn major() -> Option<u32> {
    std::fs::read_to_string("/proc/devices").ok().as_deref().and_then(major_in_proc_devices)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // _IOWR(0xfd, n, struct dm_ioctl) with sizeof == 312 (0x138).
        assert_eq!(Cmd::Version.request(), 0xc138_fd00);
        assert_eq!(Cmd::Create.request(), 0xc138_fd03);
        assert_eq!(Cmd::Remove.request(), 0xc138_fd04);
        assert_eq!(Cmd::Suspend.request(), 0xc138_fd06);
        assert_eq!(Cmd::TableLoad.request(), 0xc138_fd09);
        assert_eq!(Cmd::ListVersions.request(), 0xc138_fd0d);
    }

    #[test]
    fn a_table_load_lays_out_header_spec_and_params() {
        let t = Target { sectors: 16, kind: "verity", params: "1 254:3 254:3 4096 4096 2 2 sha256 ab cd" };
        let b = request(Cmd::TableLoad, "cairn-layer-base", "", READONLY_FLAG, Some(&t), 0).unwrap();
        // 312 + 40 + params (40 chars + NUL → 48).
        assert_eq!(b.len(), 312 + 40 + 48);
        assert_eq!(b.len() % 8, 0);
        assert_eq!(&b[0..12], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(get_u32(&b, 12) as usize, b.len());
        assert_eq!(get_u32(&b, 16), 312);
        assert_eq!(get_u32(&b, 20), 1);
        assert_eq!(get_u32(&b, 28), READONLY_FLAG);
        assert_eq!(&b[48..48 + 16], b"cairn-layer-base");
        assert_eq!(b[48 + 16], 0);
        assert_eq!(get_u64(&b, 312), 0);
        assert_eq!(get_u64(&b, 320), 16);
        assert_eq!(get_u32(&b, 332), 40 + 48);
        assert_eq!(&b[336..342], b"verity");
        assert_eq!(b[342], 0);
        assert_eq!(&b[352..352 + t.params.len()], t.params.as_bytes());
        assert_eq!(b[352 + t.params.len()], 0);
    }

    #[test]
    fn names_that_do_not_fit_are_refused_before_any_ioctl() {
        let long = "x".repeat(128);
        let e = request(Cmd::Create, &long, "", 0, None, 0).unwrap_err();
        assert_eq!((e.op, e.errno), ("DM_DEV_CREATE", libc::ENAMETOOLONG));
        assert!(request(Cmd::Create, &"x".repeat(127), &"u".repeat(128), 0, None, 0).is_ok());
        assert!(request(Cmd::Create, "a", &"u".repeat(129), 0, None, 0).is_err());
        let t = Target { sectors: 8, kind: "verity", params: "a\0b" };
        assert_eq!(request(Cmd::TableLoad, "a", "", 0, Some(&t), 0).unwrap_err().errno, libc::EINVAL);
        let t = Target { sectors: 8, kind: "a-type-name-too-long", params: "" };
        assert_eq!(request(Cmd::TableLoad, "a", "", 0, Some(&t), 0).unwrap_err().errno, libc::ENAMETOOLONG);
    }

    #[test]
    fn the_uuid_goes_after_the_name() {
        let b = request(Cmd::Create, "n", "CAIRN-VERITY-ab", READONLY_FLAG, None, 0).unwrap();
        assert_eq!(b.len(), 312);
        assert_eq!(&b[176..176 + 15], b"CAIRN-VERITY-ab");
    }

    #[test]
    fn device_numbers_decode_like_new_decode_dev() {
        assert_eq!(decode_dev((254 << 8) | 3), (254, 3));
        // minor 0x1234: low byte in bits 0-7, the rest from bit 20.
        assert_eq!(decode_dev((253 << 8) | 0x34 | (0x12 << 20)), (253, 0x1234));
        let mut b = vec![0u8; 312];
        put_u64(&mut b, 40, (254 << 8) | 7);
        put_u32(&mut b, 0, 4);
        put_u32(&mut b, 4, 47);
        let a = answer(&b);
        assert_eq!((decode_dev(a.dev), a.version), ((254, 7), [4, 47, 0]));
        assert!(compatible(a.version) && !compatible([5, 0, 0]));
    }

    #[test]
    fn target_lists_are_walked_by_next() {
        let mut b = request(Cmd::ListVersions, "", "", 0, None, 64).unwrap();
        let mut rec = |at: usize, next: u32, name: &[u8]| {
            put_u32(&mut b, at, next);
            b[at + 16..at + 16 + name.len()].copy_from_slice(name);
        };
        rec(312, 24, b"linear\0");
        rec(336, 0, b"verity\0");
        assert_eq!(target_names(&b), ["linear", "verity"]);
    }

    #[test]
    fn the_dm_major_comes_from_the_block_section() {
        let text = "Character devices:\n  1 mem\n 10 misc\n254 device-mapper\n\nBlock devices:\n  7 loop\n253 virtblk\n254 device-mapper\n259 blkext\n";
        assert_eq!(major_in_proc_devices(text), Some(254));
        assert_eq!(major_in_proc_devices("Block devices:\n  7 loop\n"), None);
        assert_eq!(major_in_proc_devices("Character devices:\n254 device-mapper\n"), None);
    }
}
