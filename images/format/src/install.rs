//! The install sequence and the boot state record's writer, as pure code
//! over a small storage trait: the ORDER of writes, flushes and read-backs
//! is what must survive a power cut, so it lives here, where a simulated
//! disk that loses power at every write tests it on the host (see the
//! `sim` tests), and the device (`cairn-init`) only implements [`Storage`]
//! with `pwrite`, `fdatasync` and `O_DIRECT` reads on block devices.
//!
//! The sequence ([`install`]):
//!
//! 1. read and verify everything before writing a byte: the bundle's
//!    signed table of contents, the manifest part (hash, signature, product,
//!    version against the floor and the committed version), the plan, and
//!    every layer part the plan writes, read and hashed once (its sha256
//!    against the TOC, its image against the manifest's digest);
//! 2. claim: one record write (target slot `installing`, the map forgets
//!    the partitions the plan writes);
//! 3. each layer part the plan writes: streamed in chunks, hashed again
//!    (the whole part: a source that changed since the check pass is
//!    caught here, in a slot that never boots), flushed, read back from the
//!    medium and hashed once more;
//! 4. the manifest slot: written, flushed, read back;
//! 5. stage: one record write (slot `ready`, trial pending).
//!
//! A record write ([`write_record`]) is one whole copy written over the
//! older copy with the next sequence number, flushed, read back from the
//! medium and compared byte for byte.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::bootstate::{self, BootState, BootStateError, Slot, COPY_SIZE, RECORD_SIZE};
use crate::bundle::{self, BundleError, PartName, Toc};
use crate::digest::{Digest, Hasher};
use crate::envelope::{self, OpenError, PublicKey};
use crate::manifest::{Layer, Manifest};
use crate::update::{self, InstallRefusal, LayerPlan, Needed, Partition};

/// Block size of direct reads: their offset and length are multiples of it.
pub const BLOCK: usize = 4096;

/// What an install reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The bundle (read only).
    Source,
    /// `cairn-state`: the boot state record.
    State,
    /// `cairn-manifest-{a,b}`.
    Manifest(Slot),
    /// `cairn-layer-NN`.
    Layer(u8),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Source => f.write_str("bundle"),
            Target::State => f.write_str("cairn-state"),
            Target::Manifest(s) => f.write_str(s.partition()),
            Target::Layer(n) => write!(f, "cairn-layer-{n:02}"),
        }
    }
}

/// The disk as the installer sees it.
pub trait Storage {
    /// Why an operation failed.
    type Error;
    /// Read `buf.len()` bytes at `offset`, through any cache; fewer only at
    /// the end of the target. Returns the bytes read.
    fn read(&mut self, target: Target, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error>;
    /// Read from the medium, past any cache of this system (`O_DIRECT`):
    /// `offset` and `buf.len()` are multiples of [`BLOCK`]. Fewer bytes only
    /// at the end of the target.
    fn read_direct(&mut self, target: Target, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error>;
    /// Write `data` at `offset`: not durable until [`Storage::flush`].
    fn write(&mut self, target: Target, offset: u64, data: &[u8]) -> Result<(), Self::Error>;
    /// Make every write to `target` durable (`fdatasync`).
    fn flush(&mut self, target: Target) -> Result<(), Self::Error>;
}

/// Why a record write did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError<E> {
    /// The state does not encode.
    Encode(BootStateError),
    /// Writing, flushing or reading back.
    Io(E),
    /// The copy read back differs from the one written.
    ReadBack {
        /// The copy.
        copy: usize,
    },
}

impl<E: fmt::Display> fmt::Display for RecordError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Encode(e) => write!(f, "{e}"),
            RecordError::Io(e) => write!(f, "{e}"),
            RecordError::ReadBack { copy } => write!(f, "copy {copy} read back differs from what was written"),
        }
    }
}

/// Why the record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError<E> {
    /// Reading the partition.
    Io(E),
    /// Neither copy is valid.
    Record(BootStateError),
}

/// The record as read, and the copy that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The copy holding `state` (0 or 1): the next write goes to the other.
    pub copy: usize,
    /// The current state.
    pub state: BootState,
}

impl Record {
    /// Read both copies from the medium and take the newest valid one.
    pub fn read<S: Storage>(s: &mut S) -> Result<Record, ReadError<S::Error>> {
        let mut region = vec![0u8; RECORD_SIZE];
        let n = s.read_direct(Target::State, 0, &mut region).map_err(ReadError::Io)?;
        region.truncate(n);
        let (copy, state) = bootstate::read_record(&region).map_err(ReadError::Record)?;
        Ok(Record { copy, state })
    }

    /// The factory fallback with the init's built-in floor: the first write
    /// goes to copy 0.
    pub fn fallback(floor: u64) -> Record {
        Record { copy: 1, state: bootstate::fallback(floor) }
    }

    /// Write `next` (see [`write_record`]). On success `self` is what was
    /// written; on failure it is unchanged (the disk holds the old copy, or
    /// a torn new one the reader refuses).
    pub fn write<S: Storage>(&mut self, s: &mut S, next: BootState) -> Result<(), RecordError<S::Error>> {
        let (copy, state) = write_record(s, self.copy, self.state.seq, next)?;
        self.copy = copy;
        self.state = state;
        Ok(())
    }
}

/// Write `next` as the state after the one in `current_copy` with
/// `current_seq`: over the other copy, sequence one higher, flushed, read
/// back from the medium and compared. Returns the copy written and the
/// state as written.
pub fn write_record<S: Storage>(
    s: &mut S,
    current_copy: usize,
    current_seq: u64,
    next: BootState,
) -> Result<(usize, BootState), RecordError<S::Error>> {
    let mut next = next;
    let at = bootstate::next_write(current_copy, current_seq, &mut next);
    let mut block = [0u8; COPY_SIZE];
    bootstate::encode_copy(&next, &mut block).map_err(RecordError::Encode)?;
    s.write(Target::State, at as u64, &block).map_err(RecordError::Io)?;
    s.flush(Target::State).map_err(RecordError::Io)?;
    let copy = at / COPY_SIZE;
    let mut back = vec![0u8; COPY_SIZE];
    let n = s.read_direct(Target::State, at as u64, &mut back).map_err(RecordError::Io)?;
    if n != COPY_SIZE || back.as_slice() != block.as_slice() {
        return Err(RecordError::ReadBack { copy });
    }
    Ok((copy, next))
}

/// What an install needs besides the disk.
pub struct Install<'a> {
    /// The trusted keys.
    pub keys: &'a [PublicKey],
    /// The device's product.
    pub product: &'a str,
    /// The committed (booted) manifest.
    pub committed: &'a Manifest,
    /// Every layer partition on the disk.
    pub partitions: &'a [Partition],
    /// Bytes moved per read and write (rounded down to a multiple of
    /// [`BLOCK`], at least one block).
    pub chunk: usize,
}

/// Each step of an install, for the caller's events.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Everything checked, nothing written yet.
    Verified {
        /// The new manifest.
        manifest: &'a Manifest,
        /// The slot it goes to.
        slot: Slot,
        /// Layers reused.
        reuse: usize,
        /// Layers to write.
        write: usize,
        /// Bytes of the layer parts to write.
        bytes: u64,
    },
    /// The claim is written: the slot is `installing`.
    Claimed {
        /// The slot.
        slot: Slot,
        /// The record's sequence number.
        seq: u64,
    },
    /// A layer part written, flushed and read back.
    LayerWritten {
        /// The manifest's layer.
        layer: &'a Layer,
        /// Its partition.
        partition: Target,
        /// Bytes written.
        bytes: u64,
    },
    /// The manifest slot written, flushed and read back.
    ManifestWritten {
        /// The slot.
        slot: Slot,
        /// Bytes written (the envelope, zero-padded to whole blocks).
        bytes: usize,
    },
    /// The trial is staged.
    Staged {
        /// The slot.
        slot: Slot,
        /// The new manifest's version.
        version: u64,
        /// Its tries.
        tries: u8,
        /// The record's sequence number.
        seq: u64,
    },
}

/// Why an install stopped. Everything up to [`InstallError::Refused`] comes
/// before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallError<E> {
    /// Reading the bundle.
    Source(E),
    /// The bundle ends inside a part.
    SourceShort {
        /// Where the read started.
        offset: u64,
        /// Bytes wanted.
        want: usize,
        /// Bytes there.
        got: usize,
    },
    /// The bundle is refused (signature, bounds, a part's hash).
    Bundle(BundleError),
    /// The manifest is for another product.
    Product(OpenError),
    /// The state machine refuses it (trial pending, floor, space).
    Refused(InstallRefusal),
    /// Writing, flushing or reading back a partition.
    Io(E),
    /// What was read back differs from what was written.
    ReadBack {
        /// The partition.
        target: Target,
        /// What was written.
        expected: Digest,
        /// What is there.
        found: Digest,
    },
    /// The partition ends before what was written does.
    ReadBackShort {
        /// The partition.
        target: Target,
        /// Where the read back found no more bytes.
        offset: u64,
    },
    /// A layer part's first `size` bytes are not the layer the manifest names.
    LayerDigest {
        /// The manifest's digest.
        digest: Digest,
        /// What the part holds.
        found: Digest,
    },
    /// The boot state record could not be written.
    State(RecordError<E>),
}

impl<E> InstallError<E> {
    /// The event's `reason`: refusals name their rule.
    pub fn reason(&self) -> &'static str {
        match self {
            InstallError::Source(_) | InstallError::SourceShort { .. } => "unreadable",
            InstallError::Bundle(_) => "bad-bundle",
            InstallError::Product(_) => "wrong-product",
            InstallError::Refused(r) => r.name(),
            InstallError::Io(_) => "io",
            InstallError::ReadBack { .. } | InstallError::ReadBackShort { .. } => "read-back",
            InstallError::LayerDigest { .. } => "layer-digest",
            InstallError::State(_) => "state-write",
        }
    }
}

impl<E: fmt::Display> fmt::Display for InstallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::Source(e) => write!(f, "reading the bundle: {e}"),
            InstallError::SourceShort { offset, want, got } => {
                write!(f, "reading the bundle: {got} bytes at {offset}, wanted {want}")
            }
            InstallError::Bundle(e) => write!(f, "{e}"),
            InstallError::Product(e) => write!(f, "{e}"),
            InstallError::Refused(e) => write!(f, "{e}"),
            InstallError::Io(e) => write!(f, "{e}"),
            InstallError::ReadBack { target, expected, found } => {
                write!(f, "{target}: read back sha256 {found:?}, wrote {expected:?}")
            }
            InstallError::ReadBackShort { target, offset } => {
                write!(f, "{target}: read back ends at byte {offset}, before what was written")
            }
            InstallError::LayerDigest { digest, found } => {
                write!(f, "layer part for {digest:?} holds an image with digest {found:?}")
            }
            InstallError::State(e) => write!(f, "{e}"),
        }
    }
}

/// Install the bundle `s` reads as [`Target::Source`]: the staged slot.
/// `record` is the record as read at boot; it follows every write.
pub fn install<S: Storage>(
    s: &mut S,
    cx: &Install<'_>,
    record: &mut Record,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Slot, InstallError<S::Error>> {
    let chunk = (cx.chunk / BLOCK).max(1) * BLOCK;
    let head = read_source(s, 0, bundle::HEAD_LEN, false)?;
    let toc = bundle::open_toc(&head, cx.keys).map_err(InstallError::Bundle)?;
    let mbytes = usize::try_from(toc.manifest.size).unwrap_or(usize::MAX);
    let mpart = read_source(s, toc.manifest.offset, mbytes, false)?;
    let (manifest, _not_carried) = bundle::open_manifest_part(&toc, &mpart, cx.keys).map_err(InstallError::Bundle)?;
    envelope::check_compatible(&manifest, cx.product).map_err(InstallError::Product)?;
    update::check_version(&record.state, manifest.version, cx.committed.version).map_err(InstallError::Refused)?;
    let committed: Vec<Digest> = cx.committed.layers.iter().map(|l| l.digest).collect();
    let plan = plan(&record.state, &committed, &toc, &manifest, cx.partitions)?;
    let target = record.state.committed.other();
    let bytes: u64 = plan.write.iter().filter_map(|w| toc.layer(&w.digest)).map(|l| l.part.size).sum();
    // Every part to be written is read and hashed once before anything is
    // written: a tampered or truncated bundle is refused with the device
    // untouched. (The write pass hashes again: a source that changes
    // between the passes is caught there, in a slot that never boots.)
    for (ix, part, ml) in planned_parts(&plan, &toc, &manifest) {
        copy_part(s, chunk, &part, PartName::Layer(ix), None, (ml.size, ml.digest))?;
    }
    progress(Progress::Verified {
        manifest: &manifest,
        slot: target,
        reuse: plan.reuse.len(),
        write: plan.write.len(),
        bytes,
    });

    // From here on the device is written: first the claim.
    let claimed = update::claim(&record.state, &plan).map_err(InstallError::Refused)?;
    record.write(s, claimed).map_err(InstallError::State)?;
    progress(Progress::Claimed { slot: target, seq: record.state.seq });
    for ((ix, part, ml), w) in planned_parts(&plan, &toc, &manifest).into_iter().zip(&plan.write) {
        let dst = Target::Layer(w.partition);
        copy_part(s, chunk, &part, PartName::Layer(ix), Some(dst), (ml.size, ml.digest))?;
        progress(Progress::LayerWritten { layer: ml, partition: dst, bytes: part.size });
    }
    // The manifest slot: the envelope, zero-padded to whole blocks.
    let dst = Target::Manifest(target);
    let mut padded = mpart;
    padded.resize(padded.len().div_ceil(BLOCK) * BLOCK, 0);
    s.write(dst, 0, &padded).map_err(InstallError::Io)?;
    s.flush(dst).map_err(InstallError::Io)?;
    let expected = Digest::of(&padded);
    let found = digest_direct(s, chunk, dst, padded.len() as u64)?;
    if found != expected {
        return Err(InstallError::ReadBack { target: dst, expected, found });
    }
    progress(Progress::ManifestWritten { slot: target, bytes: padded.len() });

    let tries = manifest.update.tries;
    let staged = update::stage(&record.state, &committed, &plan, tries, false).map_err(InstallError::Refused)?;
    record.write(s, staged).map_err(InstallError::State)?;
    progress(Progress::Staged { slot: target, version: manifest.version, tries, seq: record.state.seq });
    Ok(target)
}

/// The bundle part and manifest layer of each planned write, in plan order
/// (`plan_layers` writes only layers the bundle carries and the manifest
/// names, so none is skipped).
fn planned_parts<'m>(plan: &LayerPlan, toc: &Toc, manifest: &'m Manifest) -> Vec<(usize, bundle::Part, &'m Layer)> {
    plan.write
        .iter()
        .filter_map(|w| {
            let ix = toc.layers.iter().position(|l| l.digest == w.digest)?;
            let part = toc.layers.get(ix)?.part;
            let ml = manifest.layers.iter().find(|l| l.digest == w.digest)?;
            Some((ix, part, ml))
        })
        .collect()
}

/// Where each layer of the new manifest comes from.
fn plan<E>(
    state: &BootState,
    committed: &[Digest],
    toc: &Toc,
    manifest: &Manifest,
    partitions: &[Partition],
) -> Result<LayerPlan, InstallError<E>> {
    let needed: Vec<Needed> = manifest
        .layers
        .iter()
        .map(|l| Needed { digest: l.digest, carried: toc.layer(&l.digest).map(|p| p.part.size) })
        .collect();
    update::plan_layers(state, committed, &needed, partitions).map_err(InstallError::Refused)
}

/// Read `len` bytes of the bundle at `offset`; fewer (at its end) only if
/// not `exact`.
fn read_source<S: Storage>(s: &mut S, offset: u64, len: usize, exact: bool) -> Result<Vec<u8>, InstallError<S::Error>> {
    let mut buf = vec![0u8; len];
    let n = s.read(Target::Source, offset, &mut buf).map_err(InstallError::Source)?;
    if exact && n != len {
        return Err(InstallError::SourceShort { offset, want: len, got: n });
    }
    buf.truncate(n);
    Ok(buf)
}

/// Stream a layer part from the bundle, hashing it (and its first `size`
/// bytes against the manifest's digest); with `dst`, write it there, flush,
/// then read it back from the medium and compare. Without, only check.
fn copy_part<S: Storage>(
    s: &mut S,
    chunk: usize,
    part: &bundle::Part,
    name: PartName,
    dst: Option<Target>,
    (size, digest): (u64, Digest),
) -> Result<(), InstallError<S::Error>> {
    let mut whole = Hasher::default();
    let mut image = Hasher::default();
    let mut done = 0u64;
    while done < part.size {
        let n = usize::try_from((part.size - done).min(chunk as u64)).unwrap_or(chunk);
        let buf = read_source(s, part.offset.saturating_add(done), n, true)?;
        whole.update(&buf);
        match dst {
            // The check pass: the image against the manifest's digest too.
            None => {
                let keep = usize::try_from(size.saturating_sub(done)).unwrap_or(usize::MAX).min(buf.len());
                image.update(buf.get(..keep).unwrap_or(&[]));
            }
            Some(dst) => s.write(dst, done, &buf).map_err(InstallError::Io)?,
        }
        done += n as u64;
    }
    // The write pass needs only the whole part's hash: the same bytes as
    // the check pass's, whose image matched the manifest.
    bundle::check_digest(name, part, whole.finish()).map_err(InstallError::Bundle)?;
    let Some(dst) = dst else {
        let found = image.finish();
        if found != digest {
            return Err(InstallError::LayerDigest { digest, found });
        }
        return Ok(());
    };
    s.flush(dst).map_err(InstallError::Io)?;
    let found = digest_direct(s, chunk, dst, part.size)?;
    if found != part.sha256 {
        return Err(InstallError::ReadBack { target: dst, expected: part.sha256, found });
    }
    Ok(())
}

/// sha256 of the first `len` bytes of `target`, read from the medium in
/// whole blocks.
fn digest_direct<S: Storage>(
    s: &mut S,
    chunk: usize,
    target: Target,
    len: u64,
) -> Result<Digest, InstallError<S::Error>> {
    let mut h = Hasher::default();
    let mut done = 0u64;
    let mut buf = vec![0u8; chunk];
    while done < len {
        let want = (len - done).min(chunk as u64);
        let rounded = usize::try_from(want.div_ceil(BLOCK as u64) * BLOCK as u64).unwrap_or(chunk).min(chunk);
        let window = buf.get_mut(..rounded).unwrap_or(&mut []);
        let n = s.read_direct(target, done, window).map_err(InstallError::Io)?;
        let keep = usize::try_from(want).unwrap_or(0).min(n);
        if keep == 0 {
            return Err(InstallError::ReadBackShort { target, offset: done });
        }
        h.update(window.get(..keep).unwrap_or(&[]));
        done += keep as u64;
    }
    Ok(h.finish())
}

#[cfg(test)]
mod sim;
