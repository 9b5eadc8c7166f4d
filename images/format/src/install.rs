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
//!    caught here, in a slot that never boots), each chunk flushed and then
//!    counted in the install journal ([`crate::journal`]), the part read
//!    back from the medium and hashed once more;
//! 4. the manifest slot: written, flushed, read back;
//! 5. stage: one record write (slot `ready`, trial pending).
//!
//! Resume: when the journal names this bundle and the record still holds
//! the claim it was written for (same sequence, slot `installing`), step 2
//! is skipped and step 3 skips the chunks the journal counts (their source
//! bytes are still read and hashed); the read back of the whole part still
//! decides. A resumed part whose read back differs is written again from
//! its first chunk; nothing is staged that was not read back whole.
//!
//! A record write ([`write_record`]) is one whole copy written over the
//! older copy with the next sequence number, flushed, read back from the
//! medium and compared byte for byte.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::bootstate::{self, BootState, BootStateError, Slot, SlotStatus, COPY_SIZE, RECORD_SIZE};
use crate::bundle::{self, BundleError, PartName, Toc};
use crate::digest::{Digest, Hasher};
use crate::envelope::{self, OpenError, PublicKey};
use crate::journal::{self, Journal, JournalError, PartProgress};
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
    /// The new image of a boot entry on the ESP, under its pending name
    /// (`bootentry::pending_name`) until [`Storage::finish_entry`].
    BootImage(Slot),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Source => f.write_str("bundle"),
            Target::State => f.write_str("cairn-state"),
            Target::Manifest(s) => f.write_str(s.partition()),
            Target::Layer(n) => write!(f, "cairn-layer-{n:02}"),
            Target::BootImage(s) => {
                write!(f, "cairn-esp:{}/{}", crate::bootentry::DIR, crate::bootentry::pending_name(*s))
            }
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
    /// Make every write to `target` durable (`fdatasync`; for a boot
    /// image also its directory entry).
    fn flush(&mut self, target: Target) -> Result<(), Self::Error>;
    /// Start boot entry `slot`'s new image: remove that entry's file
    /// (whatever its counter) and any image an earlier install left, then
    /// create [`Target::BootImage`] empty. Never called for the entry the
    /// running system started from.
    fn begin_entry(&mut self, slot: Slot) -> Result<(), Self::Error>;
    /// Give the written image its entry name, on trial with `tries` (one
    /// rename), durably. Called only once the trial is staged.
    fn finish_entry(&mut self, slot: Slot, tries: u8) -> Result<(), Self::Error>;
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
    /// The boot entry the loader started this boot from, as it is named on
    /// the ESP now (`None` without a boot loader): a bundle's boot image
    /// goes into the other entry, and only if this one is blessed.
    pub booted_entry: Option<crate::bootentry::Entry>,
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
    /// The claim is written: the slot is `installing`. Not on a resumed
    /// install (the claim stands: [`Progress::Resumed`] instead).
    Claimed {
        /// The slot.
        slot: Slot,
        /// The record's sequence number.
        seq: u64,
    },
    /// An interrupted install of this bundle resumes (the claim stands):
    /// one per layer part, before it is written.
    Resumed {
        /// The manifest's layer.
        layer: &'a Layer,
        /// Its partition.
        partition: Target,
        /// Chunks the journal counts as durable: not written again.
        chunks_skipped: u32,
        /// The part's chunks.
        chunks: u32,
    },
    /// A resumed part's read back differs: it is written again, whole.
    ResumeFailed {
        /// The partition.
        partition: Target,
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
    /// The bundle's boot image written under its pending name, flushed and
    /// read back.
    BootImageWritten {
        /// The boot entry it is for.
        entry: Slot,
        /// Bytes written.
        bytes: u64,
    },
    /// After the stage: the boot image has its entry name, on trial.
    EntryNamed {
        /// The boot entry.
        entry: Slot,
        /// Its tries (the loader counts them down).
        tries: u8,
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
    /// The install journal could not be encoded.
    Journal(JournalError),
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
            InstallError::Journal(_) => "journal",
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
            InstallError::Journal(e) => write!(f, "{e}"),
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
    let mut plan = plan(&record.state, &committed, &toc, &manifest, cx.partitions)?;
    let target = record.state.committed.other();
    let bytes: u64 = plan.write.iter().filter_map(|w| toc.layer(&w.digest)).map(|l| l.part.size).sum();

    // The journal of an interrupted install of this bundle, if the record
    // still holds its claim: its partitions replace the plan's (re-planned
    // from the claimed record, the choice could differ).
    let mut region = vec![0u8; journal::SIZE];
    let n = s.read_direct(Target::State, journal::OFFSET, &mut region).map_err(InstallError::Io)?;
    region.truncate(n);
    let found = journal::read(&region);
    // The bundle is named by its signed TOC envelope (which names every
    // part's sha256) and its manifest part.
    let toc_len = bundle::read_toc(&head).map_or(head.len(), |u| u.len);
    let id = (Digest::of(head.get(..toc_len).unwrap_or(&head)), toc.manifest.sha256);
    let sizes: Vec<u64> = plan.write.iter().map(|w| toc.layer(&w.digest).map_or(u64::MAX, |l| l.part.size)).collect();
    let resume = found
        .as_ref()
        .map(|(_, j)| j)
        .filter(|j| resumable(j, record, target, id, chunk, (&plan, &sizes), cx.partitions));
    if let Some(j) = resume {
        for (w, p) in plan.write.iter_mut().zip(&j.parts) {
            w.partition = p.partition;
        }
    }
    let resume = resume.cloned();

    // Every part to be written is read and hashed once before anything is
    // written: a tampered or truncated bundle is refused with the device
    // untouched. (The write pass hashes again: a source that changes
    // between the passes is caught there, in a slot that never boots.)
    for (ix, part, ml) in planned_parts(&plan, &toc, &manifest) {
        check_part(s, chunk, &part, PartName::Layer(ix), Some((ml.size, ml.digest)))?;
    }
    // A boot image goes into the entry this boot did not start from, which
    // must be free to overwrite; it is checked whole like a layer part.
    let boot_image = match toc.boot_image {
        Some(part) => {
            let entry = update::boot_entry_target(cx.booted_entry).map_err(InstallError::Refused)?;
            check_part(s, chunk, &part, PartName::BootImage, None)?;
            Some((entry, part))
        }
        None => None,
    };
    progress(Progress::Verified {
        manifest: &manifest,
        slot: target,
        reuse: plan.reuse.len(),
        write: plan.write.len(),
        bytes,
    });

    // From here on the device is written: first the claim (unless it
    // stands), then the journal's first entry, which names it.
    let mut jw = match resume {
        Some(entry) => JournalWriter { cursor: found.map(|(c, j)| (c, j.seq)), entry, resumed: true },
        None => {
            let claimed = update::claim(&record.state, &plan).map_err(InstallError::Refused)?;
            record.write(s, claimed).map_err(InstallError::State)?;
            progress(Progress::Claimed { slot: target, seq: record.state.seq });
            let mut parts = heapless::Vec::new();
            for w in &plan.write {
                let p = PartProgress { digest: w.digest, partition: w.partition, chunks: 0 };
                parts.push(p).map_err(|_| InstallError::Journal(JournalError::TooLarge))?;
            }
            let entry = Journal {
                seq: 0,
                bundle: id.0,
                manifest: id.1,
                slot: target,
                claim_seq: record.state.seq,
                chunk: u32::try_from(chunk).unwrap_or(u32::MAX),
                parts,
            };
            let mut jw = JournalWriter { cursor: found.map(|(c, j)| (c, j.seq)), entry, resumed: false };
            jw.write(s)?;
            jw
        }
    };
    let resumed = jw.resumed;
    for (i, ((ix, part, ml), w)) in planned_parts(&plan, &toc, &manifest).into_iter().zip(&plan.write).enumerate() {
        let dst = Target::Layer(w.partition);
        let chunks = u32::try_from(part.size.div_ceil(chunk as u64)).unwrap_or(u32::MAX);
        let skip = if resumed { jw.chunks(i).min(chunks) } else { 0 };
        if resumed {
            progress(Progress::Resumed { layer: ml, partition: dst, chunks_skipped: skip, chunks });
        }
        let name = PartName::Layer(ix);
        if !write_part(s, chunk, &part, name, dst, skip, Some((&mut jw, i)))? {
            // A resumed part that does not read back: write it whole (the
            // journal first forgets its chunks, so a cut during the rewrite
            // resumes from what this rewrite flushed).
            progress(Progress::ResumeFailed { partition: dst });
            jw.set(i, 0);
            jw.write(s)?;
            // From its first chunk, a read back that differs is an error.
            write_part(s, chunk, &part, name, dst, 0, Some((&mut jw, i)))?;
        }
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

    // The boot image, under a name the loader ignores: it is not journalled
    // (an install cut here writes it again whole; it is read back before
    // the stage like everything else).
    if let Some((entry, part)) = boot_image {
        let dst = Target::BootImage(entry);
        s.begin_entry(entry).map_err(InstallError::Io)?;
        write_part(s, chunk, &part, PartName::BootImage, dst, 0, None)?;
        progress(Progress::BootImageWritten { entry, bytes: part.size });
    }

    // The stage write ends the claim the journal names: once it is
    // durable, the journal no longer agrees with the record and is ignored.
    let tries = manifest.update.tries;
    let entry = boot_image.map(|(e, _)| e);
    let staged = update::stage(&record.state, &committed, &plan, tries, entry).map_err(InstallError::Refused)?;
    record.write(s, staged).map_err(InstallError::State)?;
    progress(Progress::Staged { slot: target, version: manifest.version, tries, seq: record.state.seq });
    // Only now may the loader start the new image: a cut before this
    // rename leaves a staged trial whose image is still unnamed, which the
    // next boot names (`update::entry_to_finish`) before anything else.
    if let Some(entry) = entry {
        s.finish_entry(entry, tries).map_err(InstallError::Io)?;
        progress(Progress::EntryNamed { entry, tries });
    }
    Ok(target)
}

/// Whether journal entry `j` can resume this install: the same bundle and
/// chunk size, the record still holding the claim the entry names (its
/// sequence, the target slot `installing`, no trial), the same layers to
/// write, in order, each into a partition that exists, is large enough,
/// is used by no entry of the record's map (the claim dropped them) and by
/// no other part. Anything else: the journal is ignored and the install
/// claims afresh.
fn resumable(
    j: &Journal,
    record: &Record,
    target: Slot,
    (bundle, manifest): (Digest, Digest),
    chunk: usize,
    plan: (&LayerPlan, &[u64]),
    partitions: &[Partition],
) -> bool {
    let (plan, sizes) = plan;
    let st = &record.state;
    let same_claim = j.claim_seq == st.seq
        && j.slot == target
        && st.trial.is_none()
        && st.status_of(target) == SlotStatus::Installing
        && j.bundle == bundle
        && j.manifest == manifest
        && usize::try_from(j.chunk).ok() == Some(chunk);
    let same_layers =
        j.parts.len() == plan.write.len() && j.parts.iter().zip(&plan.write).all(|(p, w)| p.digest == w.digest);
    let places_ok = j.parts.iter().enumerate().all(|(i, p)| {
        let size = sizes.get(i).copied().unwrap_or(u64::MAX);
        let fits = partitions.iter().any(|q| q.number == p.partition && q.bytes >= size);
        let unmapped = !st.layer_slots.iter().any(|m| m.partition == p.partition);
        let alone = j.parts.iter().filter(|o| o.partition == p.partition).count() == 1;
        fits && unmapped && alone
    });
    same_claim && same_layers && places_ok
}

/// The install journal as this install writes it: the entry, and the copy
/// and sequence last written (or found).
struct JournalWriter {
    cursor: Option<(usize, u64)>,
    entry: Journal,
    /// Whether the entry came from an interrupted install.
    resumed: bool,
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

impl JournalWriter {
    /// Chunks of part `i` the entry counts.
    fn chunks(&self, i: usize) -> u32 {
        self.entry.parts.get(i).map_or(0, |p| p.chunks)
    }

    fn set(&mut self, i: usize, chunks: u32) {
        if let Some(p) = self.entry.parts.get_mut(i) {
            p.chunks = chunks;
        }
    }

    /// Write the entry over the other copy, then flush. No read back: a
    /// journal that lies costs a rewrite (the part's read back decides),
    /// never a staged slot.
    fn write<S: Storage>(&mut self, s: &mut S) -> Result<(), InstallError<S::Error>> {
        let at = journal::next_write(self.cursor, &mut self.entry);
        let mut block = [0u8; COPY_SIZE];
        journal::encode_copy(&self.entry, &mut block).map_err(InstallError::Journal)?;
        s.write(Target::State, journal::OFFSET + at as u64, &block).map_err(InstallError::Io)?;
        s.flush(Target::State).map_err(InstallError::Io)?;
        self.cursor = Some((at / COPY_SIZE, self.entry.seq));
        Ok(())
    }
}

/// The check pass: stream a part from the bundle, hashing it whole
/// (against the TOC) and, for a layer, its first `size` bytes (against the
/// manifest's digest). Writes nothing.
fn check_part<S: Storage>(
    s: &mut S,
    chunk: usize,
    part: &bundle::Part,
    name: PartName,
    layer: Option<(u64, Digest)>,
) -> Result<(), InstallError<S::Error>> {
    let (size, digest) = layer.unwrap_or((0, Digest::of(&[])));
    let mut whole = Hasher::default();
    let mut image = Hasher::default();
    let mut done = 0u64;
    while done < part.size {
        let n = usize::try_from((part.size - done).min(chunk as u64)).unwrap_or(chunk);
        let buf = read_source(s, part.offset.saturating_add(done), n, true)?;
        whole.update(&buf);
        let keep = usize::try_from(size.saturating_sub(done)).unwrap_or(usize::MAX).min(buf.len());
        image.update(buf.get(..keep).unwrap_or(&[]));
        done += n as u64;
    }
    bundle::check_digest(name, part, whole.finish()).map_err(InstallError::Bundle)?;
    let found = image.finish();
    if layer.is_some() && found != digest {
        return Err(InstallError::LayerDigest { digest, found });
    }
    Ok(())
}

/// The write pass of a part: stream it from the bundle, hashing it whole
/// (the same bytes as the check pass's, whose image matched the manifest);
/// write each chunk from `skip` on to `dst`; with a journal (its writer
/// and the part's index in it), flush each chunk, then count it in the
/// journal (so the journal never counts a chunk that is not durable),
/// without one flush once at the end; then read the part back from the
/// medium and compare. `Ok(false)`: a resumed part (`skip > 0`) does not
/// read back.
fn write_part<S: Storage>(
    s: &mut S,
    chunk: usize,
    part: &bundle::Part,
    name: PartName,
    dst: Target,
    skip: u32,
    mut journal: Option<(&mut JournalWriter, usize)>,
) -> Result<bool, InstallError<S::Error>> {
    let mut whole = Hasher::default();
    let mut done = 0u64;
    let mut k = 0u32;
    while done < part.size {
        let n = usize::try_from((part.size - done).min(chunk as u64)).unwrap_or(chunk);
        let buf = read_source(s, part.offset.saturating_add(done), n, true)?;
        whole.update(&buf);
        k = k.saturating_add(1);
        if k > skip {
            s.write(dst, done, &buf).map_err(InstallError::Io)?;
            if let Some((jw, i)) = journal.as_mut() {
                s.flush(dst).map_err(InstallError::Io)?;
                jw.set(*i, k);
                jw.write(s)?;
            }
        }
        done += n as u64;
    }
    if journal.is_none() {
        s.flush(dst).map_err(InstallError::Io)?;
    }
    bundle::check_digest(name, part, whole.finish()).map_err(InstallError::Bundle)?;
    let found = digest_direct(s, chunk, dst, part.size)?;
    if found != part.sha256 {
        if skip > 0 {
            return Ok(false);
        }
        return Err(InstallError::ReadBack { target: dst, expected: part.sha256, found });
    }
    Ok(true)
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
