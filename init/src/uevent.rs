//! Run-time corruption reports from dm-verity.
//!
//! When a block read through a verity target does not match its hash, the
//! kernel (`verity_handle_err`, drivers/md/dm-verity-target.c) logs
//! `device-mapper: verity: MAJ:MIN: data block N is corrupted` and sends a
//! `change` uevent on the dm disk with `DM_VERITY_ERR_BLOCK_NR=<type>,<block>`
//! (type 0: data block, 1: hash (metadata) block), for the first 100
//! corrupted blocks of a target. PID 1 listens on a non-blocking
//! `NETLINK_KOBJECT_UEVENT` socket from its event loop, maps the dm device
//! to its layer and emits `layer.corrupt` once per (layer, block).
//! The reader got EIO already (default policy); nothing else is done here:
//! a container that fails on it fails by itself, and its restart policy
//! applies. [`Watch::corrupted`] records that a layer went bad this boot
//! (the OTA trial logic counts it as a failed trial).

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};

use cairn_format::manifest::OnCorruption;
use cairn_runtime::sys::{self, SysResult};

use crate::event::event;
use crate::storage::LayerTarget;

/// Which kind of block failed its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BlockKind {
    /// A data block of the layer image.
    Data,
    /// A block of the hash tree.
    Metadata,
}

impl BlockKind {
    /// Its name in events.
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Data => "data",
            BlockKind::Metadata => "metadata",
        }
    }
}

/// One verity error uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityError {
    /// Kernel name of the dm disk (`dm-3`).
    pub device: String,
    /// Data or hash block.
    pub kind: BlockKind,
    /// Block number (4 KiB blocks from the start of the data, or of the
    /// hash device for metadata).
    pub block: u64,
}

/// Parse one uevent datagram (`ACTION@DEVPATH\0KEY=VALUE\0...`): a verity
/// error on a block disk, or `None` for anything else.
pub fn parse(msg: &[u8]) -> Option<VerityError> {
    let mut fields = msg.split(|b| *b == 0).filter(|f| !f.is_empty());
    let head = fields.next()?;
    if !head.starts_with(b"change@") {
        return None;
    }
    let (mut err, mut dev, mut subsystem) = (None, None, None);
    for f in fields {
        let f = std::str::from_utf8(f).ok()?;
        if let Some(v) = f.strip_prefix("DM_VERITY_ERR_BLOCK_NR=") {
            err = Some(v);
        } else if let Some(v) = f.strip_prefix("DEVNAME=") {
            dev = Some(v);
        } else if let Some(v) = f.strip_prefix("SUBSYSTEM=") {
            subsystem = Some(v);
        }
    }
    if subsystem != Some("block") {
        return None;
    }
    let (kind, block) = err?.split_once(',')?;
    let kind = match kind {
        "0" => BlockKind::Data,
        "1" => BlockKind::Metadata,
        _ => return None,
    };
    let device = dev?.rsplit('/').next()?.to_owned();
    Some(VerityError { device, kind, block: block.parse().ok()? })
}

/// Most uevents read in one wake of the event loop.
const DRAIN_BATCH: usize = 64;

/// At most this many distinct (layer, block) pairs are reported per boot;
/// the kernel itself stops at 100 per target.
pub const MAX_REPORTED: usize = 256;

/// Which corruptions were reported already.
#[derive(Debug, Default)]
pub struct Seen {
    pairs: BTreeSet<(String, BlockKind, u64)>,
    /// Reports dropped past [`MAX_REPORTED`].
    pub dropped: u64,
}

impl Seen {
    /// Whether this (layer, kind, block) is new and within the bound.
    pub fn first(&mut self, layer: &str, kind: BlockKind, block: u64) -> bool {
        let key = (layer.to_owned(), kind, block);
        if self.pairs.contains(&key) {
            return false;
        }
        if self.pairs.len() >= MAX_REPORTED {
            self.dropped += 1;
            return false;
        }
        self.pairs.insert(key)
    }
}

/// What the kernel does about a corrupt block, for the event.
pub fn effect(on: OnCorruption) -> &'static str {
    match on {
        OnCorruption::Error => "readers of this block get EIO",
        OnCorruption::Restart => "the kernel restarts the device",
        OnCorruption::Panic => "the kernel panics",
    }
}

/// The layer a dm device belongs to.
pub fn layer_of<'a>(targets: &'a [LayerTarget], device: &str) -> Option<&'a LayerTarget> {
    targets.iter().find(|t| t.dm.kernel_name() == device)
}

/// A non-blocking socket on the kernel's uevents (group 1).
fn socket() -> SysResult<OwnedFd> {
    use nix::sys::socket::{self as so, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};
    let fd = so::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .map_err(sys::err("socket", "NETLINK_KOBJECT_UEVENT"))?;
    so::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1)).map_err(sys::err("bind", "uevent group 1"))?;
    Ok(fd)
}

/// Whether one uevent datagram is about a block device (a disk or a
/// partition added, changed or removed).
pub fn is_block(msg: &[u8]) -> bool {
    msg.split(|b| *b == 0).any(|f| f == b"SUBSYSTEM=block")
}

/// What the boot disk's wait sleeps on between two scans: the kernel's
/// uevents, so that a disk or partition that appears wakes it at once,
/// and a disk that takes seconds to appear (USB storage) is not scanned
/// fifty times a second meanwhile. Without the socket it naps.
pub struct BlockWake(Option<OwnedFd>);

impl BlockWake {
    /// Listen from now on: a device the kernel adds after this is a wake;
    /// one added before is there for the scan that follows.
    pub fn open() -> Self {
        BlockWake(socket().ok())
    }

    /// Whether it listens (without the socket, [`Self::nap`] sleeps).
    pub fn listens(&self) -> bool {
        self.0.is_some()
    }

    /// Return once a block device uevent came (read, with every other
    /// waiting one), or `most` passed.
    pub fn nap(&mut self, most: std::time::Duration) {
        let Some(fd) = self.0.as_ref() else {
            std::thread::sleep(most);
            return;
        };
        let until = std::time::Instant::now() + most;
        let mut buf = [0u8; 8192];
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            if ms == 0 {
                return;
            }
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, for the call's duration.
            if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
                // Timed out, or interrupted (signals are blocked in PID 1):
                // the caller scans again either way.
                return;
            }
            // At most a batch per wake, as the event loop's drain: the
            // rest is read after the next poll, which returns at once.
            let mut block = false;
            for _ in 0..DRAIN_BATCH {
                match nix::sys::socket::recvfrom::<nix::sys::socket::NetlinkAddr>(fd.as_raw_fd(), &mut buf) {
                    Ok((n, Some(from))) if from.pid() == 0 => block |= buf.get(..n).is_some_and(is_block),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    // Lost ones may have been block ones: scan.
                    Err(nix::errno::Errno::ENOBUFS) => block = true,
                    Err(_) => break,
                }
            }
            if block {
                return;
            }
        }
    }
}

/// The listening socket, the layers behind verity, and what was seen.
pub struct Watch {
    fd: OwnedFd,
    targets: Vec<LayerTarget>,
    seen: Seen,
    /// A layer block failed its hash this boot (a failed trial for OTA).
    pub corrupted: bool,
}

impl Watch {
    /// Listen for kernel uevents (group 1), non-blocking.
    pub fn open(targets: Vec<LayerTarget>) -> SysResult<Self> {
        Ok(Watch { fd: socket()?, targets, seen: Seen::default(), corrupted: false })
    }

    /// The descriptor to poll.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Read the waiting uevents (never blocks: the socket is non-blocking),
    /// at most [`DRAIN_BATCH`] per wake so a flood cannot hold the event
    /// loop (poll is level-triggered: the rest is read on the next turn),
    /// and report verity errors.
    pub fn drain(&mut self) {
        use nix::errno::Errno;
        let mut buf = [0u8; 8192];
        for _ in 0..DRAIN_BATCH {
            match nix::sys::socket::recvfrom::<nix::sys::socket::NetlinkAddr>(self.fd.as_raw_fd(), &mut buf) {
                // Only the kernel (port 0) speaks for the kernel.
                Ok((n, Some(from))) if from.pid() == 0 => {
                    if let Some(e) = buf.get(..n).and_then(parse) {
                        self.report(&e);
                    }
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::ENOBUFS) => {
                    event("uevent.overflow").kv("effect", "some kernel uevents were lost").emit();
                }
                Err(_) => return,
            }
        }
    }

    fn report(&mut self, e: &VerityError) {
        let Some(t) = layer_of(&self.targets, &e.device) else {
            event("verity.error").kv("dm", &e.device).kv("kind", e.kind.name()).kv("block", e.block).emit();
            return;
        };
        self.corrupted = true;
        let first = self.seen.first(&t.layer, e.kind, e.block);
        if !first && self.seen.dropped == 1 {
            event("layer.corrupt-limit").kv("max", MAX_REPORTED).kv("effect", "further blocks are not reported").emit();
        }
        if first {
            event("layer.corrupt")
                .kv("name", &t.layer)
                .kv("digest", t.digest)
                .kv("dm", e.device.as_str())
                .kv("kind", e.kind.name())
                .kv("block", e.block)
                .kv("effect", effect(t.on_corruption))
                .emit();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(fields: &[&str]) -> Vec<u8> {
        let mut m = Vec::new();
        for f in fields {
            m.extend_from_slice(f.as_bytes());
            m.push(0);
        }
        m
    }

    #[test]
    fn a_verity_error_uevent_names_device_kind_and_block() {
        let m = msg(&[
            "change@/devices/virtual/block/dm-2",
            "ACTION=change",
            "DEVPATH=/devices/virtual/block/dm-2",
            "SUBSYSTEM=block",
            "DM_VERITY_ERR_BLOCK_NR=0,37",
            "MAJOR=254",
            "MINOR=2",
            "DEVNAME=dm-2",
            "DEVTYPE=disk",
            "SEQNUM=812",
        ]);
        assert_eq!(parse(&m), Some(VerityError { device: "dm-2".into(), kind: BlockKind::Data, block: 37 }));
        let m = msg(&["change@/x", "SUBSYSTEM=block", "DEVNAME=dm-0", "DM_VERITY_ERR_BLOCK_NR=1,18446744073709551615"]);
        assert_eq!(parse(&m).unwrap().kind, BlockKind::Metadata);
        assert_eq!(parse(&m).unwrap().block, u64::MAX);
    }

    #[test]
    fn other_uevents_and_malformed_ones_are_ignored() {
        assert_eq!(parse(&msg(&["change@/d/dm-1", "SUBSYSTEM=block", "DEVNAME=dm-1", "DM_COOKIE=1"])), None);
        assert_eq!(
            parse(&msg(&["add@/d/dm-1", "SUBSYSTEM=block", "DEVNAME=dm-1", "DM_VERITY_ERR_BLOCK_NR=0,1"])),
            None
        );
        assert_eq!(parse(&msg(&["change@/d", "SUBSYSTEM=net", "DEVNAME=dm-1", "DM_VERITY_ERR_BLOCK_NR=0,1"])), None);
        assert_eq!(parse(&msg(&["change@/d", "SUBSYSTEM=block", "DEVNAME=dm-1", "DM_VERITY_ERR_BLOCK_NR=2,1"])), None);
        assert_eq!(parse(&msg(&["change@/d", "SUBSYSTEM=block", "DEVNAME=dm-1", "DM_VERITY_ERR_BLOCK_NR=0,x"])), None);
        assert_eq!(parse(&msg(&["change@/d", "SUBSYSTEM=block", "DM_VERITY_ERR_BLOCK_NR=0,1"])), None);
        assert_eq!(parse(b"libudev\0\xfe\xed"), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn a_disk_or_partition_wakes_the_disk_wait_and_other_devices_do_not() {
        let part =
            msg(&["add@/devices/pci0000:00/0000:00:02.0/virtio1/block/vda/vda1", "ACTION=add", "SUBSYSTEM=block"]);
        assert!(is_block(&part));
        assert!(!is_block(&msg(&["add@/devices/virtual/net/eth0", "ACTION=add", "SUBSYSTEM=net"])));
        assert!(!is_block(&msg(&["add@/x", "SUBSYSTEM=blockx"])), "the whole field, not a prefix");
        assert!(!is_block(b""));
    }

    #[test]
    fn each_layer_block_is_reported_once_and_the_total_is_bounded() {
        let mut s = Seen::default();
        assert!(s.first("app", BlockKind::Data, 5));
        assert!(!s.first("app", BlockKind::Data, 5));
        assert!(s.first("app", BlockKind::Metadata, 5));
        assert!(s.first("base", BlockKind::Data, 5));
        for b in 0..MAX_REPORTED as u64 {
            s.first("big", BlockKind::Data, 100 + b);
        }
        assert!(!s.first("big", BlockKind::Data, 1));
        assert_eq!(s.dropped, 4);
    }
}
