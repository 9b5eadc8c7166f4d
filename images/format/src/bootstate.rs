//! The boot state record on the `cairn-state` partition.
//!
//! Two copies, each in its own 4 KiB block (offsets 0 and 4096). A writer
//! always overwrites the copy that is *not* the newest valid one, with a
//! sequence number one higher, so a power cut during a write leaves the other
//! copy intact. A reader takes the valid copy with the highest sequence.
//!
//! The factory writes both copies. A device that finds neither valid boots
//! the factory slot (A) with [`fallback`]: the floor built into its init,
//! and the factory layer placement ([`BootState::factory_layout`]).
//!
//! Copy layout (little endian): magic "CAIRNBS2" (8), payload length (4),
//! crc32 of the payload (4), postcard payload. A "CAIRNBS1" copy (the first
//! record, with one `active` slot and no per-slot status) still reads: as
//! its active slot committed and good.
//!
//! Every transition of the record (install, trial, commit, rollback) is a
//! pure function in [`crate::update`].

use core::fmt;
use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Size of one copy's block.
pub const COPY_SIZE: usize = 4096;
/// Both copies.
pub const RECORD_SIZE: usize = 2 * COPY_SIZE;
/// Copy magic.
pub const MAGIC: [u8; 8] = *b"CAIRNBS2";
/// The first record's magic (read, never written).
pub const MAGIC_V1: [u8; 8] = *b"CAIRNBS1";
/// Most layer slot hints.
pub const MAX_LAYER_SLOTS: usize = 32;
const HEADER: usize = 16;

/// One of the two manifest slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// `cairn-manifest-a`.
    A,
    /// `cairn-manifest-b`.
    B,
}

impl Slot {
    /// Partition name of the slot.
    pub fn partition(self) -> &'static str {
        match self {
            Slot::A => "cairn-manifest-a",
            Slot::B => "cairn-manifest-b",
        }
    }
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

/// What a manifest slot holds, as far as booting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotStatus {
    /// Nothing was ever installed.
    Empty,
    /// An install is writing it: it never boots.
    Installing,
    /// Installed and verified, not yet booted (or on trial).
    Ready,
    /// Booted and committed once.
    Good,
    /// Its trial failed: it never boots again until reinstalled.
    Bad,
}

impl SlotStatus {
    /// Its name in events.
    pub fn name(self) -> &'static str {
        match self {
            SlotStatus::Empty => "empty",
            SlotStatus::Installing => "installing",
            SlotStatus::Ready => "ready",
            SlotStatus::Good => "good",
            SlotStatus::Bad => "bad",
        }
    }
}

impl fmt::Display for SlotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A staged update: the slot boots on trial until it commits or its tries
/// run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The manifest slot on trial (never the committed one).
    pub slot: Slot,
    /// Boots left; each is spent (written) before anything is mounted.
    pub tries_left: u8,
    /// The boot entry on the ESP the install wrote the bundle's boot image
    /// into (new kernel or init), if it carried one. Entry letters and
    /// manifest letters are two A/B pairs: the entry is the one the
    /// committed system did not boot from, whatever the manifest slot. A
    /// trial boot the loader started from another entry means the new
    /// image never got this far, and the trial has failed. (Encoded as the
    /// `bool` it replaces when `None`: no earlier install wrote `true`.)
    pub boot_entry: Option<Slot>,
}

/// A hint: the layer with this digest was written to this layer partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSlot {
    /// Layer digest.
    pub digest: Digest,
    /// Number NN of the `cairn-layer-NN` partition.
    pub partition: u8,
}

/// What the device needs to know before it reads a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// Sequence number, one higher on every write.
    pub seq: u64,
    /// The manifest slot that proved itself last: the one to fall back to.
    /// It has no tries, so power cuts can never use it up.
    pub committed: Slot,
    /// A staged update on trial, if any.
    pub trial: Option<Trial>,
    /// Status of slot A and slot B.
    pub status: [SlotStatus; 2],
    /// Lowest manifest version the device accepts (anti-rollback); it rises
    /// only when a trial commits.
    pub rollback_floor: u64,
    /// Where each layer was written. An entry is added only once its layer
    /// is written and verified, and dropped before its partition is written.
    pub layer_slots: Vec<LayerSlot, MAX_LAYER_SLOTS>,
}

impl BootState {
    /// The state of a freshly flashed device: slot A committed and good.
    pub fn factory(layer_slots: Vec<LayerSlot, MAX_LAYER_SLOTS>) -> Self {
        Self {
            seq: 1,
            committed: Slot::A,
            trial: None,
            status: [SlotStatus::Good, SlotStatus::Empty],
            rollback_floor: 0,
            layer_slots,
        }
    }

    /// The factory layout: layer `i` of the manifest (in manifest order) is
    /// on `cairn-layer-{i+1}`, as `cairn image assemble` writes it.
    pub fn factory_layout(manifest: &crate::manifest::Manifest) -> Vec<LayerSlot, MAX_LAYER_SLOTS> {
        manifest
            .layers
            .iter()
            .zip(1u8..)
            .map(|(l, partition)| LayerSlot { digest: l.digest, partition })
            .take(MAX_LAYER_SLOTS)
            .collect()
    }

    /// Where a digest was written, if known.
    pub fn partition_of(&self, digest: &Digest) -> Option<u8> {
        self.layer_slots.iter().find(|s| s.digest == *digest).map(|s| s.partition)
    }

    /// A slot's status.
    pub fn status_of(&self, slot: Slot) -> SlotStatus {
        let [a, b] = self.status;
        match slot {
            Slot::A => a,
            Slot::B => b,
        }
    }

    /// Set a slot's status.
    pub fn set_status(&mut self, slot: Slot, status: SlotStatus) {
        let [a, b] = &mut self.status;
        match slot {
            Slot::A => *a = status,
            Slot::B => *b = status,
        }
    }
}

/// The first record's payload (magic "CAIRNBS1").
#[derive(Deserialize)]
struct BootStateV1 {
    seq: u64,
    active: Slot,
    _trial: bool,
    _attempts_left: u8,
    rollback_floor: u64,
    layer_slots: Vec<LayerSlot, MAX_LAYER_SLOTS>,
}

impl From<BootStateV1> for BootState {
    fn from(v1: BootStateV1) -> Self {
        // No device ever wrote a v1 record: it is the factory's, whose
        // active slot is the one that boots.
        let mut s = BootState::factory(v1.layer_slots);
        s.seq = v1.seq;
        s.committed = v1.active;
        s.status = [SlotStatus::Empty; 2];
        s.set_status(v1.active, SlotStatus::Good);
        s.rollback_floor = v1.rollback_floor;
        s
    }
}

/// The state a device assumes when neither copy is valid: the factory slot
/// A, no trial, the rollback floor built into the init (`floor`), and no
/// layer placement yet (the caller fills it from the factory manifest with
/// [`BootState::factory_layout`]). Sequence 0, so any real write wins.
pub fn fallback(floor: u64) -> BootState {
    BootState { seq: 0, rollback_floor: floor, ..BootState::factory(Vec::new()) }
}

/// Read the record, or fall back to the factory state. The error says why
/// the fallback was taken.
pub fn read_or_fallback(region: &[u8], floor: u64) -> (BootState, Option<BootStateError>) {
    match read_record(region) {
        Ok((_, s)) => (s, None),
        Err(e) => (fallback(floor), Some(e)),
    }
}

/// Why a copy or the record could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootStateError {
    /// The input is shorter than expected.
    TooShort,
    /// Neither magic found (blank or foreign partition).
    BadMagic,
    /// The checksum does not match (torn or corrupted write).
    BadChecksum,
    /// The payload does not decode.
    Decode,
    /// The state does not fit in a copy.
    TooLarge,
    /// Neither copy is valid.
    NoValidCopy,
}

impl fmt::Display for BootStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooShort => "boot state region too short",
            Self::BadMagic => "no boot state magic",
            Self::BadChecksum => "boot state checksum mismatch",
            Self::Decode => "boot state payload malformed",
            Self::TooLarge => "boot state too large for a copy",
            Self::NoValidCopy => "neither boot state copy is valid",
        })
    }
}

/// Encode one copy into a `COPY_SIZE` block.
pub fn encode_copy(state: &BootState, block: &mut [u8; COPY_SIZE]) -> Result<(), BootStateError> {
    block.fill(0);
    let (header, body) = block.split_at_mut(HEADER);
    let used = postcard::to_slice(state, body).map_err(|_| BootStateError::TooLarge)?.len();
    let crc = crc32fast::hash(body.get(..used).ok_or(BootStateError::TooLarge)?);
    let (len, crc) = ((used as u32).to_le_bytes(), crc.to_le_bytes());
    let fields = MAGIC.iter().chain(&len).chain(&crc).copied();
    for (dst, src) in header.iter_mut().zip(fields) {
        *dst = src;
    }
    Ok(())
}

/// Decode one copy.
pub fn decode_copy(block: &[u8]) -> Result<BootState, BootStateError> {
    let header = block.get(..HEADER).ok_or(BootStateError::TooShort)?;
    let v1 = match header.get(..8) {
        Some(m) if m == MAGIC => false,
        Some(m) if m == MAGIC_V1 => true,
        _ => return Err(BootStateError::BadMagic),
    };
    let word = |r: core::ops::Range<usize>| -> Result<u32, BootStateError> {
        let b = header.get(r).ok_or(BootStateError::TooShort)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    };
    let len = word(8..12)? as usize;
    let crc = word(12..16)?;
    if len > COPY_SIZE - HEADER {
        return Err(BootStateError::BadChecksum);
    }
    let body = block.get(HEADER..HEADER + len).ok_or(BootStateError::TooShort)?;
    if crc32fast::hash(body) != crc {
        return Err(BootStateError::BadChecksum);
    }
    if v1 {
        return postcard::from_bytes::<BootStateV1>(body).map(BootState::from).map_err(|_| BootStateError::Decode);
    }
    postcard::from_bytes(body).map_err(|_| BootStateError::Decode)
}

/// Which copy holds the newest valid state, and that state.
pub fn read_record(region: &[u8]) -> Result<(usize, BootState), BootStateError> {
    let a = region.get(..COPY_SIZE).map(decode_copy);
    let b = region.get(COPY_SIZE..RECORD_SIZE).map(decode_copy);
    match (a, b) {
        (Some(Ok(a)), Some(Ok(b))) => Ok(if newer(b.seq, a.seq) { (1, b) } else { (0, a) }),
        (Some(Ok(a)), _) => Ok((0, a)),
        (_, Some(Ok(b))) => Ok((1, b)),
        (None, _) => Err(BootStateError::TooShort),
        _ => Err(BootStateError::NoValidCopy),
    }
}

/// Whether sequence number `x` was written after `y`. Serial-number
/// arithmetic (RFC 1982): the sequence wraps from `u64::MAX` to 0, so a
/// copy at `u64::MAX` (which counting never reaches, but a corrupted copy
/// with a valid checksum can hold) does not freeze the record.
pub fn newer(x: u64, y: u64) -> bool {
    (x.wrapping_sub(y) as i64) > 0
}

/// Prepare the next write: the state gets `seq` one past the current one, and
/// the returned offset is that of the copy that is not the current one.
pub fn next_write(current_copy: usize, current_seq: u64, next: &mut BootState) -> usize {
    next.seq = current_seq.wrapping_add(1);
    if current_copy == 0 {
        COPY_SIZE
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_wraps_without_freezing_the_record() {
        assert!(newer(1, 0) && !newer(0, 1) && !newer(5, 5));
        assert!(newer(0, u64::MAX), "0 follows u64::MAX");
        let mut region = vec![0u8; RECORD_SIZE];
        let mut block = [0u8; COPY_SIZE];
        assert_eq!(encode_copy(&state(u64::MAX), &mut block), Ok(()));
        region[..COPY_SIZE].copy_from_slice(&block);
        let (copy, current) = read_record(&region).unwrap_or_else(|e| panic!("{e}"));
        let mut next = state(0);
        let at = next_write(copy, current.seq, &mut next);
        assert_eq!(encode_copy(&next, &mut block), Ok(()));
        region[at..at + COPY_SIZE].copy_from_slice(&block);
        let (_, read) = read_record(&region).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.seq, 0, "the write after u64::MAX is the one read back");
    }

    fn state(seq: u64) -> BootState {
        let mut s = BootState::factory(Vec::from_iter([LayerSlot { digest: Digest([3; 32]), partition: 1 }]));
        s.seq = seq;
        s
    }

    fn region(a: Option<&BootState>, b: Option<&BootState>) -> std::vec::Vec<u8> {
        let mut r = vec![0u8; RECORD_SIZE];
        for (i, s) in [a, b].into_iter().enumerate() {
            if let Some(s) = s {
                let mut block = [0u8; COPY_SIZE];
                assert_eq!(encode_copy(s, &mut block), Ok(()));
                r[i * COPY_SIZE..(i + 1) * COPY_SIZE].copy_from_slice(&block);
            }
        }
        r
    }

    #[test]
    fn the_newest_valid_copy_wins() {
        let r = region(Some(&state(4)), Some(&state(5)));
        assert_eq!(read_record(&r).map(|(i, s)| (i, s.seq)), Ok((1, 5)));
        let r = region(Some(&state(7)), Some(&state(5)));
        assert_eq!(read_record(&r).map(|(i, s)| (i, s.seq)), Ok((0, 7)));
    }

    #[test]
    fn a_torn_write_falls_back_to_the_other_copy() {
        let mut r = region(Some(&state(4)), Some(&state(5)));
        // Power cut half way through writing copy 1: its tail is garbage.
        for b in &mut r[COPY_SIZE + 20..COPY_SIZE + 40] {
            *b ^= 0xff;
        }
        assert_eq!(read_record(&r).map(|(i, s)| (i, s.seq)), Ok((0, 4)));
        // A flipped bit anywhere in the payload is caught.
        let mut r = region(Some(&state(4)), None);
        r[HEADER + 1] ^= 1;
        assert_eq!(read_record(&r), Err(BootStateError::NoValidCopy));
        assert_eq!(read_record(&[0u8; 10]), Err(BootStateError::TooShort));
        assert_eq!(read_record(&vec![0u8; RECORD_SIZE]), Err(BootStateError::NoValidCopy));
    }

    #[test]
    fn with_no_valid_copy_the_factory_slot_boots_with_the_built_in_floor() {
        let mut r = region(Some(&state(4)), Some(&state(5)));
        r[COPY_SIZE + HEADER] ^= 1;
        let (s, why) = read_or_fallback(&r, 7);
        assert_eq!((s.seq, why), (4, None), "copy 0 alone still boots");
        r[HEADER] ^= 1;
        let (s, why) = read_or_fallback(&r, 7);
        assert_eq!(why, Some(BootStateError::NoValidCopy));
        assert_eq!((s.committed, s.trial, s.rollback_floor, s.layer_slots.len()), (Slot::A, None, 7, 0));
        let (s, why) = read_or_fallback(&[], 0);
        assert_eq!((s.committed, s.rollback_floor, why), (Slot::A, 0, Some(BootStateError::TooShort)));
    }

    #[test]
    fn writes_alternate_copies_with_rising_sequence() {
        let mut next = state(0);
        assert_eq!(next_write(0, 9, &mut next), COPY_SIZE);
        assert_eq!(next.seq, 10);
        assert_eq!(next_write(1, 10, &mut next), 0);
        assert_eq!(next.partition_of(&Digest([3; 32])), Some(1));
        assert_eq!(next.partition_of(&Digest([4; 32])), None);
    }

    #[test]
    fn a_first_record_reads_as_its_active_slot_committed_and_good() {
        // The v1 payload: seq, active, trial, attempts_left, floor, slots.
        let v1 = (
            9u64,
            Slot::B,
            false,
            0u8,
            4u64,
            Vec::<LayerSlot, MAX_LAYER_SLOTS>::from_iter([LayerSlot { digest: Digest([3; 32]), partition: 2 }]),
        );
        let body = postcard::to_allocvec(&v1).unwrap_or_default();
        let mut block = vec![0u8; COPY_SIZE];
        block[..8].copy_from_slice(&MAGIC_V1);
        block[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
        block[12..16].copy_from_slice(&crc32fast::hash(&body).to_le_bytes());
        block[HEADER..HEADER + body.len()].copy_from_slice(&body);
        let s = decode_copy(&block).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.seq, s.committed, s.trial, s.rollback_floor), (9, Slot::B, None, 4));
        assert_eq!(s.status, [SlotStatus::Empty, SlotStatus::Good]);
        assert_eq!(s.partition_of(&Digest([3; 32])), Some(2));
        block[..8].copy_from_slice(b"CAIRNBS9");
        assert_eq!(decode_copy(&block), Err(BootStateError::BadMagic));
    }
}
