//! Reading partitions: the boot state region, a manifest slot, and layers.
//!
//! Layers are checked as the manifest says (`layer_check`):
//! - `verity` (the default): each layer partition is put behind a
//!   read-only dm-verity target built from the signed manifest's
//!   parameters (root hash, salt, geometry; nothing on the partition is
//!   trusted), the target's first block is read once (an EIO there: wrong
//!   root hash, or a corrupt superblock region; the layer is refused before
//!   it is mounted), and `/dev/dm-N` is mounted. Every later read is
//!   checked by the kernel; nothing is hashed at boot.
//! - `digest`: the first `size` bytes are hashed with sha256 and compared
//!   with the digest, then the partition is mounted directly (kernels
//!   without dm-verity; nothing is checked after the mount).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;

use cairn_format::bootstate::BootState;
use cairn_format::digest::{Digest, Hasher};
use cairn_format::manifest::{Layer, LayerCheck, OnCorruption};
use cairn_format::verity;
use cairn_runtime::sys;

use crate::dm;
use crate::event::event;
use crate::partitions::{self, Partitions};

/// Where verified layers are mounted, by digest.
pub const LAYERS_DIR: &str = "/run/cairn/layers";

/// Where the data partition (`cairn-data`, ext4) is mounted.
pub const DATA_DIR: &str = "/run/cairn/data";

/// Why a partition could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No partition with that GPT name.
    #[error("partition {0} not found")]
    Missing(String),
    /// Reading it failed.
    #[error("reading {path}: {error}")]
    Read {
        /// Device node.
        path: String,
        /// Cause.
        error: std::io::Error,
    },
}

/// Read the first `len` bytes of a named partition.
pub fn read_partition(parts: &Partitions, name: &str, len: usize) -> Result<Vec<u8>, StorageError> {
    let path = parts.get(name).ok_or_else(|| StorageError::Missing(name.into()))?;
    let mut buf = Vec::with_capacity(len);
    File::open(path)
        .and_then(|f| f.take(len as u64).read_to_end(&mut buf))
        .map_err(|error| StorageError::Read { path: path.clone(), error })?;
    Ok(buf)
}

/// Hash the first `size` bytes of a device.
fn digest_of(path: &str, size: u64) -> std::io::Result<Digest> {
    let mut f = File::open(path)?.take(size);
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(buf.get(..n).unwrap_or(&[]));
        crate::watchdog::pet(); // watchdog: hashing a layer takes seconds
    }
    if total != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("partition holds {total} of {size} bytes"),
        ));
    }
    Ok(h.finish())
}

/// A layer behind a dm-verity target (kept for the uevent watch and the
/// teardown at shutdown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerTarget {
    /// Layer name.
    pub layer: String,
    /// Its content digest.
    pub digest: Digest,
    /// The dm device.
    pub dm: dm::Device,
    /// What the kernel does on a corrupt block.
    pub on_corruption: OnCorruption,
}

/// The mounted layers.
#[derive(Debug, Default)]
pub struct Mounted {
    /// Layer name → mount directory, for the layers that passed.
    pub dirs: BTreeMap<String, String>,
    /// The verity targets set up (mounted or not: every one to remove).
    pub targets: Vec<LayerTarget>,
}

/// The dm device name of a layer.
pub fn dm_name(layer: &str) -> String {
    format!("cairn-layer-{layer}")
}

/// The dm uuid of a layer: names its content.
pub fn dm_uuid(digest: &Digest) -> String {
    format!("CAIRN-VERITY-{digest}")
}

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: u64 = (2 << 30) | (8 << 16) | (0x12 << 8) | 114;

/// Size of a block device in bytes.
fn device_bytes(path: &str) -> sys::SysResult<u64> {
    let fd = sys::open(path, libc::O_RDONLY)?;
    let mut bytes = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer passed.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), BLKGETSIZE64 as _, &mut bytes) };
    if rc < 0 {
        return Err(sys::SysError { op: "ioctl BLKGETSIZE64", arg: path.into(), errno: sys::errno() });
    }
    Ok(bytes)
}

/// `major:minor` of a block device node.
fn block_dev_of(path: &str) -> sys::SysResult<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| sys::SysError {
        op: "stat",
        arg: path.into(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    })?;
    let rdev = m.rdev();
    Ok(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

/// Why the partition cannot hold a layer's image and tree, if it cannot.
pub fn too_small(partition_bytes: u64, v: &verity::Verity) -> Option<String> {
    let need = v.partition_bytes();
    (partition_bytes < need)
        .then(|| format!("partition holds {partition_bytes} bytes, image and hash tree need {need}"))
}

/// Read the first block through the verity target: the kernel checks it
/// against the root hash on the way (EIO: it does not match).
fn read_first_block(path: &str) -> std::io::Result<()> {
    let mut buf = vec![0u8; verity::BLOCK as usize];
    File::open(path)?.read_exact(&mut buf)
}

/// Check and mount every layer as `check` says. Each failure is an event
/// naming the digest; the layers that failed are not mounted. Two layer
/// names with one digest share one partition, target and mount.
pub fn mount_layers(check: LayerCheck, layers: &[Layer], state: &BootState, parts: &Partitions) -> Mounted {
    let mut out = Mounted::default();
    let control = match check {
        LayerCheck::Digest => None,
        LayerCheck::Verity(_) => match verity_control() {
            Ok(c) => Some(c),
            Err(reason) => {
                for layer in layers {
                    event("layer.refused")
                        .kv("name", &layer.name)
                        .kv("digest", layer.digest)
                        .kv("check", "verity")
                        .kv("reason", &reason)
                        .emit();
                }
                return out;
            }
        },
    };
    // Digest → mount directory, for layers mounted already.
    let mut by_digest: BTreeMap<Digest, String> = BTreeMap::new();
    for layer in layers {
        crate::watchdog::pet(); // watchdog: one pet per layer checked and mounted
        let d = layer.digest;
        if let Some(dir) = by_digest.get(&d) {
            event("layer.mounted").kv("name", &layer.name).kv("digest", d).kv("shared", dir).emit();
            out.dirs.insert(layer.name.as_str().to_owned(), dir.clone());
            continue;
        }
        let Some(number) = state.partition_of(&d) else {
            event("layer.missing")
                .kv("name", &layer.name)
                .kv("digest", d)
                .kv("reason", "no partition recorded for this digest")
                .emit();
            continue;
        };
        let part = partitions::layer_partition_name(number);
        let Some(dev) = partitions::layer_partition(parts, number) else {
            event("layer.missing").kv("name", &layer.name).kv("digest", d).kv("partition", &part).emit();
            continue;
        };
        let started = std::time::Instant::now();
        // The node to mount, and the verity target behind it if any.
        let (node, target) = match (&control, check) {
            (Some(c), LayerCheck::Verity(on)) => match setup_verity(c, layer, dev, &part, on) {
                Some((target, node)) => (node, Some(target)),
                None => continue,
            },
            _ => {
                if !digest_matches(layer, dev, &part) {
                    continue;
                }
                (dev.clone(), None)
            }
        };
        let checked = started.elapsed();
        let dir = format!("{LAYERS_DIR}/{d}");
        let mounted = sys::mkdir_all(&dir, 0o755).and_then(|()| {
            sys::mount(
                "layer",
                Some(&node),
                &dir,
                Some("squashfs"),
                libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
                None,
            )
        });
        if let Err(e) = mounted {
            event("layer.mount-failed").kv("name", &layer.name).kv("digest", d).kv("error", e).emit();
            if let (Some(c), Some(t)) = (&control, &target) {
                remove_now(c, &t.name);
            }
            continue;
        }
        let ev = event("layer.mounted")
            .kv("name", &layer.name)
            .kv("digest", d)
            .kv("partition", &part)
            .kv("size", layer.size)
            .kv("check_ms", ms(checked))
            .kv("mount_ms", ms(started.elapsed().saturating_sub(checked)));
        match (target, check) {
            (Some(t), LayerCheck::Verity(on)) => {
                ev.kv("check", "verity").kv("dm", t.kernel_name()).kv("root", layer.verity.root_hash).emit();
                out.targets.push(LayerTarget {
                    layer: layer.name.as_str().to_owned(),
                    digest: d,
                    dm: t,
                    on_corruption: on,
                });
            }
            _ => ev.kv("check", "digest").emit(),
        }
        by_digest.insert(d, dir.clone());
        out.dirs.insert(layer.name.as_str().to_owned(), dir);
    }
    out
}

/// Milliseconds with one decimal (integer arithmetic: float formatting
/// would add ~9 KB to the init).
fn ms(d: std::time::Duration) -> String {
    let tenths = d.as_micros() / 100;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Remove a target that will not be mounted (an event if that fails).
fn remove_now(c: &dm::Control, name: &str) {
    if let Err(e) = c.remove(name) {
        event("dm.remove-failed").kv("name", name).kv("error", e).emit();
    }
}

/// The control node, checked to have the `verity` target type; or why not.
fn verity_control() -> Result<dm::Control, String> {
    let c = dm::Control::open().map_err(|e| format!("no device-mapper (module dm-mod): {e}"))?;
    let types = c.target_types().map_err(|e| e.to_string())?;
    if !types.iter().any(|t| t == "verity") {
        return Err(format!(
            "the kernel has no dm-verity target (module dm-verity not loaded; targets: {})",
            types.join(",")
        ));
    }
    Ok(c)
}

/// Today's digest check: hash the image, compare. Failures are events.
fn digest_matches(layer: &Layer, dev: &str, part: &str) -> bool {
    let d = layer.digest;
    match digest_of(dev, layer.size) {
        Ok(found) if found == d => true,
        Ok(found) => {
            event("layer.corrupt")
                .kv("name", &layer.name)
                .kv("digest", d)
                .kv("found", found)
                .kv("partition", part)
                .emit();
            false
        }
        Err(e) => {
            event("layer.unreadable")
                .kv("name", &layer.name)
                .kv("digest", d)
                .kv("partition", part)
                .kv("error", e)
                .emit();
            false
        }
    }
}

/// Put a layer partition behind a verity target and read its first block.
/// The target and its node; `None` (after an event; the target removed)
/// when it cannot be used.
fn setup_verity(
    c: &dm::Control,
    layer: &Layer,
    dev: &str,
    part: &str,
    on: OnCorruption,
) -> Option<(dm::Device, String)> {
    let d = layer.digest;
    let v = &layer.verity;
    let refuse = |reason: &str| {
        event("layer.refused")
            .kv("name", &layer.name)
            .kv("digest", d)
            .kv("partition", part)
            .kv("check", "verity")
            .kv("reason", reason)
            .emit();
    };
    match device_bytes(dev) {
        Ok(bytes) => {
            if let Some(why) = too_small(bytes, v) {
                refuse(&why);
                return None;
            }
        }
        Err(e) => {
            refuse(&e.to_string());
            return None;
        }
    }
    let majmin = match block_dev_of(dev) {
        Ok(m) => m,
        Err(e) => {
            refuse(&e.to_string());
            return None;
        }
    };
    let params = verity::table(v, &majmin, on.table_arg());
    let target =
        dm::Target { sectors: v.data_blocks.saturating_mul(dm::SECTORS_PER_BLOCK), kind: "verity", params: &params };
    let name = dm_name(&layer.name);
    let target = match c.create(&name, &dm_uuid(&d), &target) {
        Ok(t) => t,
        Err(e) => {
            refuse(&e.to_string());
            return None;
        }
    };
    let node = match dm::ensure_node(&target) {
        Ok(n) => n,
        Err(e) => {
            refuse(&e.to_string());
            remove_now(c, &name);
            return None;
        }
    };
    let Err(e) = read_first_block(&node) else {
        return Some((target, node));
    };
    let ev = event("layer.corrupt")
        .kv("name", &layer.name)
        .kv("digest", d)
        .kv("partition", part)
        .kv("dm", target.kernel_name())
        .kv("root", v.root_hash)
        .kv("block", 0);
    let ev = if e.raw_os_error() == Some(libc::EIO) {
        ev.kv(
            "reason",
            "first block does not match the signed root hash (wrong root hash or corrupt superblock region)",
        )
    } else {
        ev.kv("reason", format!("reading the first block of {node}: {e}"))
    };
    ev.kv("effect", "not mounted").emit();
    remove_now(c, &name);
    None
}

/// Remove the layers' verity targets (at shutdown, after the layers were
/// unmounted). A failure (EBUSY: still mounted) is an event; nothing waits.
pub fn remove_targets(targets: &[LayerTarget]) {
    if targets.is_empty() {
        return;
    }
    let c = match dm::Control::open() {
        Ok(c) => c,
        Err(e) => {
            event("dm.remove-failed").kv("error", e).emit();
            return;
        }
    };
    let mut removed = 0;
    for t in targets {
        match c.remove(&t.dm.name) {
            Ok(()) => removed += 1,
            Err(e) if e.errno == libc::ENXIO => {} // removed already
            Err(e) => event("dm.remove-failed").kv("name", &t.dm.name).kv("layer", &t.layer).kv("error", e).emit(),
        }
    }
    event("dm.removed").kv("count", removed).kv("of", targets.len()).emit();
}

/// Mount the data partition read-write at [`DATA_DIR`]. Its absence or a
/// failed mount is an event, not a boot failure: containers run from their
/// layers, and only volumes (when configured) need it. Mounted with
/// `prjquota` (volume size limits are enforced project quotas); a
/// partition made without project quotas is mounted without it
/// (`quota=off`: volumes then have no size limit).
pub fn mount_data(parts: &Partitions) {
    crate::watchdog::pet(); // watchdog: an ext4 journal replay may take a while
    crate::modules::load_late(); // the quota format
    let Some(dev) = parts.get("cairn-data") else {
        event("data.unavailable").kv("reason", "no cairn-data partition").emit();
        return;
    };
    let flags = libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOATIME;
    let mount = |data| sys::mount("cairn-data", Some(dev), DATA_DIR, Some("ext4"), flags, data);
    let mounted = sys::mkdir_all(DATA_DIR, 0o755).and_then(|()| match mount(Some("prjquota")) {
        Ok(()) => Ok("prjquota".to_owned()),
        Err(q) => mount(None).map(|()| format!("off({})", sys::errno_name(q.errno))),
    });
    match mounted {
        Ok(quota) => {
            event("data.mounted").kv("device", dev).kv("path", DATA_DIR).kv("fs", "ext4").kv("quota", quota).emit()
        }
        Err(e) => event("data.unavailable").kv("device", dev).kv("error", e).emit(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_with_one_decimal() {
        use std::time::Duration;
        assert_eq!(ms(Duration::from_micros(21_456)), "21.4");
        assert_eq!(ms(Duration::from_micros(99)), "0.0");
        assert_eq!(ms(Duration::from_secs(2)), "2000.0");
    }

    #[test]
    fn names_and_sizes() {
        assert_eq!(dm_name("base"), "cairn-layer-base");
        let d = Digest([0xab; 32]);
        assert_eq!(dm_uuid(&d), format!("CAIRN-VERITY-{}", "ab".repeat(32)));
        assert!(dm_uuid(&d).len() < 129);
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
        let v = verity::Verity { data_blocks: 200, hash_offset: 200 * 4096, salt: [0; 32], root_hash: d };
        assert_eq!(too_small(203 * 4096, &v), None);
        assert_eq!(
            too_small(203 * 4096 - 1, &v).unwrap(),
            "partition holds 831487 bytes, image and hash tree need 831488"
        );
    }
}
