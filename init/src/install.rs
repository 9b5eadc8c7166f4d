//! The update installer: a forked child of PID 1 that reads a bundle,
//! checks everything before writing a byte, writes the missing layers and
//! the manifest into the slot the committed manifest does not use, reads
//! them back, and stages a trial with one durable write of the boot state
//! record. PID 1 only starts it and watches it exit (a hostile or broken
//! bundle can crash or hang the child, never PID 1).
//!
//! The source this step knows is a whole disk that holds a bundle (a USB
//! stick or a second disk written with `dd`): `autoinstall` at boot.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use cairn_format::bootstate::Slot;
use cairn_format::bundle::{self, BundleError, PartName, Toc};
use cairn_format::digest::{Digest, Hasher};
use cairn_format::envelope::{self, OpenError};
use cairn_format::manifest::Manifest;
use cairn_format::update::{self, InstallRefusal, LayerPlan, Needed, Partition};
use cairn_runtime::sys::{self, SysError};

use crate::event::event;
use crate::partitions::Partitions;
use crate::record::{self, Record};
use crate::trust::Trust;

/// Bytes moved per read and write.
const CHUNK: usize = 1 << 20;

/// Why an install stopped. Refusals come before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Reading the bundle.
    #[error("reading the bundle: {0}")]
    Source(SysError),
    /// The bundle is refused (signature, bounds, a part's hash).
    #[error("{0}")]
    Bundle(BundleError),
    /// The manifest is for another product.
    #[error("{0}")]
    Product(OpenError),
    /// The state machine refuses it (trial pending, floor, space).
    #[error("{0}")]
    Refused(InstallRefusal),
    /// The device has no trust data.
    #[error("this device has no valid trust data: it refuses every bundle")]
    NoTrust,
    /// A partition the install needs is missing.
    #[error("partition {0} is missing")]
    Partition(String),
    /// Writing or reading back a partition.
    #[error("{0}")]
    Io(SysError),
    /// What was read back differs from what was written.
    #[error("{partition}: read back sha256 {found:?}, wrote {expected:?}")]
    ReadBack {
        /// The partition.
        partition: String,
        /// What was written.
        expected: Digest,
        /// What is there.
        found: Digest,
    },
    /// A layer part's first `size` bytes are not the layer the manifest names.
    #[error("layer part for {digest:?} holds an image with digest {found:?}")]
    LayerDigest {
        /// The manifest's digest.
        digest: Digest,
        /// What the part holds.
        found: Digest,
    },
    /// The boot state record could not be written.
    #[error("{0}")]
    State(record::WriteError),
}

impl InstallError {
    /// The event's `reason`: refusals name their rule.
    pub fn reason(&self) -> &'static str {
        match self {
            InstallError::Source(_) => "unreadable",
            InstallError::Bundle(_) => "bad-bundle",
            InstallError::Product(_) => "wrong-product",
            InstallError::Refused(r) => r.name(),
            InstallError::NoTrust => "no-trust",
            InstallError::Partition(_) => "no-partition",
            InstallError::Io(_) => "io",
            InstallError::ReadBack { .. } => "read-back",
            InstallError::LayerDigest { .. } => "layer-digest",
            InstallError::State(_) => "state-write",
        }
    }
}

/// The first disk other than the boot disk whose first bytes are a bundle's
/// table of contents: `/dev/NAME`.
pub fn find_bundle_disk(boot_disk: &str) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != boot_disk && !["loop", "ram", "dm-", "sr", "zram"].iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    names.into_iter().map(|n| format!("/dev/{n}")).find(|dev| {
        read_exact_at(dev, 0, bundle::TOC_MAGIC.len()).is_ok_and(|head| head.as_slice() == bundle::TOC_MAGIC)
    })
}

/// Everything the install needs from the running system.
pub struct Context<'a> {
    /// The trusted keys and product.
    pub trust: Option<&'a Trust>,
    /// The committed (booted) manifest.
    pub committed: &'a Manifest,
    /// The boot state record.
    pub record: Record,
    /// The boot disk's partitions.
    pub partitions: &'a Partitions,
}

/// Install the bundle on `source`. Each step is an event; the result is the
/// staged slot.
pub fn install(source: &str, mut cx: Context<'_>) -> Result<Slot, InstallError> {
    let started = Instant::now();
    let trust = cx.trust.ok_or(InstallError::NoTrust)?;
    let src = sys::open(source, libc::O_RDONLY | libc::O_CLOEXEC).map_err(InstallError::Source)?;
    let head = read_fd_at(&src, source, 0, bundle::HEAD_LEN).map_err(InstallError::Source)?;
    let toc = bundle::open_toc(&head, &trust.keys).map_err(InstallError::Bundle)?;
    let mbytes = usize::try_from(toc.manifest.size).unwrap_or(usize::MAX);
    let mpart = read_fd_at(&src, source, toc.manifest.offset, mbytes).map_err(InstallError::Source)?;
    let (manifest, _not_carried) =
        bundle::open_manifest_part(&toc, &mpart, &trust.keys).map_err(InstallError::Bundle)?;
    envelope::check_compatible(&manifest, &trust.product).map_err(InstallError::Product)?;
    update::check_version(&cx.record.state, manifest.version, cx.committed.version).map_err(InstallError::Refused)?;
    let plan = plan(&cx, &toc, &manifest)?;
    let target = cx.record.state.committed.other();
    let carried: u64 = plan.write.iter().filter_map(|w| toc.layer(&w.digest)).map(|l| l.part.size).sum();
    event("update.verified")
        .kv("version", manifest.version)
        .kv("product", &manifest.compatible)
        .kv("slot", target)
        .kv("layers", manifest.layers.len())
        .kv("reuse", plan.reuse.len())
        .kv("write", plan.write.len())
        .kv("bytes", carried)
        .emit();

    // From here on the device is written: first the claim.
    let claimed = update::claim(&cx.record.state, &plan).map_err(InstallError::Refused)?;
    cx.record.write(claimed).map_err(InstallError::State)?;
    event("update.claimed").kv("slot", target).kv("seq", cx.record.state.seq).emit();
    for w in &plan.write {
        let Some(layer) = toc.layer(&w.digest) else { continue };
        let Some(ml) = manifest.layers.iter().find(|l| l.digest == w.digest) else { continue };
        let name = format!("cairn-layer-{:02}", w.partition);
        let dev = cx.partitions.get(&name).ok_or_else(|| InstallError::Partition(name.clone()))?;
        let t = Instant::now();
        let ix = toc.layers.iter().position(|l| l.digest == w.digest).unwrap_or(0);
        copy_part(&src, source, &layer.part, PartName::Layer(ix), dev, Some((ml.size, ml.digest)))?;
        event("update.layer-written")
            .kv("layer", &ml.name)
            .kv("digest", ml.digest.short())
            .kv("partition", &name)
            .kv("bytes", layer.part.size)
            .kv("ms", t.elapsed().as_millis())
            .emit();
    }
    // The manifest slot: the envelope, zero-padded to whole blocks.
    let slot_part = target.partition();
    let dev = cx.partitions.get(slot_part).ok_or_else(|| InstallError::Partition(slot_part.into()))?;
    let mut padded = mpart;
    padded.resize(padded.len().div_ceil(4096) * 4096, 0);
    write_and_check(dev, &padded)?;
    event("update.manifest-written").kv("slot", target).kv("bytes", padded.len()).emit();

    let committed: Vec<Digest> = cx.committed.layers.iter().map(|l| l.digest).collect();
    let staged = update::stage(&cx.record.state, &committed, &plan, manifest.update.tries, false)
        .map_err(InstallError::Refused)?;
    cx.record.write(staged).map_err(InstallError::State)?;
    event("update.staged")
        .kv("slot", target)
        .kv("version", manifest.version)
        .kv("tries", manifest.update.tries)
        .kv("seq", cx.record.state.seq)
        .kv("ms", started.elapsed().as_millis())
        .emit();
    Ok(target)
}

/// Where each layer of the new manifest comes from.
fn plan(cx: &Context<'_>, toc: &Toc, manifest: &Manifest) -> Result<LayerPlan, InstallError> {
    let committed: Vec<Digest> = cx.committed.layers.iter().map(|l| l.digest).collect();
    let needed: Vec<Needed> = manifest
        .layers
        .iter()
        .map(|l| Needed { digest: l.digest, carried: toc.layer(&l.digest).map(|p| p.part.size) })
        .collect();
    let partitions: Vec<Partition> = cx
        .partitions
        .iter()
        .filter_map(|(name, dev)| {
            let number = name.strip_prefix("cairn-layer-")?.parse::<u8>().ok()?;
            Some(Partition { number, bytes: partition_bytes(dev)? })
        })
        .collect();
    update::plan_layers(&cx.record.state, &committed, &needed, &partitions).map_err(InstallError::Refused)
}

/// A partition's size from sysfs.
fn partition_bytes(dev: &str) -> Option<u64> {
    let name = dev.rsplit('/').next()?;
    let sectors = std::fs::read_to_string(format!("/sys/class/block/{name}/size")).ok()?;
    sectors.trim().parse::<u64>().ok()?.checked_mul(512)
}

/// Stream a part from the bundle into `dev`, hashing it (and, for a layer,
/// its first `size` bytes against the manifest's digest), flush, then read
/// it back past the page cache and compare.
fn copy_part(
    src: &OwnedFd,
    source: &str,
    part: &bundle::Part,
    name: PartName,
    dev: &str,
    layer: Option<(u64, Digest)>,
) -> Result<(), InstallError> {
    let out = sys::open(dev, libc::O_WRONLY | libc::O_CLOEXEC).map_err(InstallError::Io)?;
    let mut whole = Hasher::default();
    let mut image = Hasher::default();
    let mut done = 0u64;
    while done < part.size {
        let n = usize::try_from((part.size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        let buf = read_fd_at(src, source, part.offset + done, n).map_err(InstallError::Source)?;
        if buf.len() != n {
            return Err(InstallError::Source(SysError { op: "read", arg: source.into(), errno: libc::EIO }));
        }
        whole.update(&buf);
        if let Some((size, _)) = layer {
            let keep = usize::try_from(size.saturating_sub(done)).unwrap_or(usize::MAX).min(buf.len());
            image.update(buf.get(..keep).unwrap_or(&[]));
        }
        write_fd_at(&out, dev, done, &buf).map_err(InstallError::Io)?;
        done += n as u64;
    }
    bundle::check_digest(name, part, whole.finish()).map_err(InstallError::Bundle)?;
    if let Some((_, digest)) = layer {
        let found = image.finish();
        if found != digest {
            return Err(InstallError::LayerDigest { digest, found });
        }
    }
    nix::unistd::fdatasync(&out).map_err(sys::err("fdatasync", dev)).map_err(InstallError::Io)?;
    drop(out);
    let found = digest_direct(dev, part.size).map_err(InstallError::Io)?;
    if found != part.sha256 {
        return Err(InstallError::ReadBack { partition: dev.into(), expected: part.sha256, found });
    }
    Ok(())
}

/// Write `data` at the start of `dev`, flush, read back and compare.
fn write_and_check(dev: &str, data: &[u8]) -> Result<(), InstallError> {
    let out = sys::open(dev, libc::O_WRONLY | libc::O_CLOEXEC).map_err(InstallError::Io)?;
    write_fd_at(&out, dev, 0, data).map_err(InstallError::Io)?;
    nix::unistd::fdatasync(&out).map_err(sys::err("fdatasync", dev)).map_err(InstallError::Io)?;
    drop(out);
    let expected = Digest::of(data);
    let found = digest_direct(dev, data.len() as u64).map_err(InstallError::Io)?;
    if found != expected {
        return Err(InstallError::ReadBack { partition: dev.into(), expected, found });
    }
    Ok(())
}

/// sha256 of the first `len` bytes of `dev`, read with O_DIRECT.
fn digest_direct(dev: &str, len: u64) -> Result<Digest, SysError> {
    let mut h = Hasher::default();
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(CHUNK as u64);
        // O_DIRECT reads whole blocks: read the block-rounded length, hash
        // only what belongs to the part.
        let rounded = usize::try_from(want.div_ceil(4096) * 4096).unwrap_or(CHUNK);
        let buf = record::read_at(dev, done, rounded)?;
        let keep = usize::try_from(want).unwrap_or(0).min(buf.len());
        if keep == 0 {
            return Err(SysError { op: "read back", arg: dev.into(), errno: libc::EIO });
        }
        h.update(buf.get(..keep).unwrap_or(&[]));
        done += keep as u64;
    }
    Ok(h.finish())
}

fn read_exact_at(dev: &str, offset: u64, len: usize) -> Result<Vec<u8>, SysError> {
    let fd = sys::open(dev, libc::O_RDONLY | libc::O_CLOEXEC)?;
    read_fd_at(&fd, dev, offset, len)
}

/// Read up to `len` bytes at `offset` (fewer at the end of the source).
fn read_fd_at(fd: &OwnedFd, what: &str, offset: u64, len: usize) -> Result<Vec<u8>, SysError> {
    let mut buf = vec![0u8; len];
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        let at = libc::off_t::try_from(offset + done as u64).unwrap_or(libc::off_t::MAX);
        let n = nix::sys::uio::pread(fd.as_fd(), rest, at).map_err(sys::err("pread", what))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

fn write_fd_at(fd: &OwnedFd, what: &str, offset: u64, data: &[u8]) -> Result<(), SysError> {
    let mut done = 0usize;
    while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
        let at = libc::off_t::try_from(offset + done as u64).unwrap_or(libc::off_t::MAX);
        let n = nix::sys::uio::pwrite(fd.as_fd(), rest, at).map_err(sys::err("pwrite", what))?;
        if n == 0 {
            return Err(SysError { op: "pwrite", arg: what.into(), errno: libc::EIO });
        }
        done += n;
    }
    Ok(())
}

/// Fork the installer for the bundle on `source`: the child installs and
/// exits (0: staged; 1: refused or failed, said in its events); PID 1 gets
/// the child's pid to watch. `None` (with an event) if fork fails.
pub fn spawn(source: &str, cx: Context<'_>) -> Option<libc::pid_t> {
    // SAFETY: PID 1 is single-threaded, so the child is a consistent copy;
    // the child never returns into PID 1's code: it ends in exit_now.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            event("update.installing").kv("source", source).kv("pid", child.as_raw()).emit();
            Some(child.as_raw())
        }
        Ok(nix::unistd::ForkResult::Child) => {
            let code = match install(source, cx) {
                Ok(_) => 0,
                Err(e) => {
                    event("update.refused").kv("source", source).kv("reason", e.reason()).kv("error", &e).emit();
                    1
                }
            };
            sys::exit_now(code)
        }
        Err(e) => {
            event("update.unavailable").kv("source", source).kv("error", sys::err("fork", "installer")(e)).emit();
            None
        }
    }
}
