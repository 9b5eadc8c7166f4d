//! The install journal: how far an interrupted install got, so the next
//! boot resumes it instead of starting over.
//!
//! Where: the `cairn-state` partition (1 MiB), right after the boot state
//! record's two copies: bytes [`OFFSET`]..`OFFSET + 2 * COPY_SIZE` (8 KiB to
//! 16 KiB). The partition is written only by the installer child and PID 1's
//! record writer, it is never a slot's (no install ever overwrites it), and it
//! exists on every disk `cairn image assemble` writes (zeros there read as "no
//! journal"). No partition is added and the record's format is unchanged.
//!
//! Two copies, ping-pong like the record: a writer overwrites the copy that
//! is not the newest valid one, with the journal's own sequence one higher,
//! so a torn journal write leaves the previous entry readable. A copy
//! (little endian): magic `CAIRNJN1` (8), format version (4, [`VERSION`]),
//! payload length (4), postcard payload, sha256 of everything before it (32).
//!
//! What an entry says: the bundle (sha256 of its signed head, and the
//! manifest part's sha256), the slot being installed, the record's sequence
//! number right after the claim, the chunk size, and per layer part (in plan
//! order) its layer digest, the partition it goes to and how many chunks of
//! it are durable. An entry is written only after an `fdatasync` of the data
//! chunks it counts, so what it counts is on the medium.
//!
//! A torn write can also revive an older copy: if an earlier write of the
//! same sequence lost only its first sector, the next write's header can
//! complete it (the `install_journal` fuzz target found such a region).
//! That entry was written after the chunks it counts were flushed, for the
//! claim it names, so it is still true.
//!
//! The journal is a hint, never trusted for what gets staged: the installer
//! uses it only when the record still says the same claim (same sequence,
//! the slot `installing`, no trial) for the same bundle, and a resumed layer
//! part is still read back from the medium and hashed whole against the
//! signed table of contents before the stage write.

use core::fmt;
use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::bootstate::{newer, Slot, COPY_SIZE, RECORD_SIZE};
use crate::digest::Digest;

/// Where the journal starts on `cairn-state`: after the record's copies.
pub const OFFSET: u64 = RECORD_SIZE as u64;
/// Both copies.
pub const SIZE: usize = 2 * COPY_SIZE;
/// Copy magic.
pub const MAGIC: [u8; 8] = *b"CAIRNJN1";
/// The format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Most layer parts one install writes (the record's map holds at most 32).
pub const MAX_PARTS: usize = 32;
const HEADER: usize = 16;
const TRAILER: usize = 32;

/// One layer part of an install and its durable progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartProgress {
    /// The layer's digest.
    pub digest: Digest,
    /// Number NN of the `cairn-layer-NN` partition it is written to.
    pub partition: u8,
    /// Leading chunks written and flushed.
    pub chunks: u32,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The journal's own sequence, one higher on every write.
    pub seq: u64,
    /// sha256 of the bundle's signed head (its table of contents).
    pub bundle: Digest,
    /// sha256 of the bundle's manifest part.
    pub manifest: Digest,
    /// The slot being installed.
    pub slot: Slot,
    /// The boot state record's sequence number after the claim.
    pub claim_seq: u64,
    /// Bytes per chunk.
    pub chunk: u32,
    /// Each layer part to write, in plan order.
    pub parts: Vec<PartProgress, MAX_PARTS>,
}

/// Why a journal copy does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalError {
    /// Shorter than a copy.
    TooShort,
    /// No magic (never written, or not a journal).
    BadMagic,
    /// A format version this code does not know.
    Version(u32),
    /// The sha256 does not match (a torn or corrupted write).
    BadDigest,
    /// The payload does not decode (or has bytes after it).
    Decode,
    /// The entry does not fit in a copy.
    TooLarge,
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => f.write_str("install journal region too short"),
            Self::BadMagic => f.write_str("no install journal magic"),
            Self::Version(v) => write!(f, "install journal version {v} is not {VERSION}"),
            Self::BadDigest => f.write_str("install journal digest mismatch"),
            Self::Decode => f.write_str("install journal payload malformed"),
            Self::TooLarge => f.write_str("install journal entry too large for a copy"),
        }
    }
}

/// Encode one copy into a `COPY_SIZE` block.
pub fn encode_copy(j: &Journal, block: &mut [u8; COPY_SIZE]) -> Result<(), JournalError> {
    block.fill(0);
    let body = block.get_mut(HEADER..COPY_SIZE - TRAILER).ok_or(JournalError::TooLarge)?;
    let used = postcard::to_slice(j, body).map_err(|_| JournalError::TooLarge)?.len();
    let (version, len) = (VERSION.to_le_bytes(), (used as u32).to_le_bytes());
    let fields = MAGIC.iter().chain(&version).chain(&len).copied();
    for (dst, src) in block.iter_mut().zip(fields) {
        *dst = src;
    }
    let end = HEADER + used;
    let digest = Digest::of(block.get(..end).ok_or(JournalError::TooLarge)?);
    block.get_mut(end..end + TRAILER).ok_or(JournalError::TooLarge)?.copy_from_slice(&digest.0);
    Ok(())
}

/// Decode one copy.
pub fn decode_copy(block: &[u8]) -> Result<Journal, JournalError> {
    let block = block.get(..COPY_SIZE).ok_or(JournalError::TooShort)?;
    if block.get(..8) != Some(&MAGIC[..]) {
        return Err(JournalError::BadMagic);
    }
    let word = |at: usize| -> u32 {
        let mut a = [0u8; 4];
        if let Some(b) = block.get(at..at + 4) {
            a.copy_from_slice(b);
        }
        u32::from_le_bytes(a)
    };
    let version = word(8);
    if version != VERSION {
        return Err(JournalError::Version(version));
    }
    let len = word(12) as usize;
    if len > COPY_SIZE - HEADER - TRAILER {
        return Err(JournalError::BadDigest);
    }
    let end = HEADER + len;
    let covered = block.get(..end).ok_or(JournalError::TooShort)?;
    let stored = block.get(end..end + TRAILER).ok_or(JournalError::TooShort)?;
    if Digest::of(covered).0 != stored {
        return Err(JournalError::BadDigest);
    }
    let body = block.get(HEADER..end).ok_or(JournalError::TooShort)?;
    match postcard::take_from_bytes::<Journal>(body) {
        Ok((j, [])) => Ok(j),
        _ => Err(JournalError::Decode),
    }
}

/// The newest valid copy of the journal region (both copies) and which copy
/// holds it, if any.
pub fn read(region: &[u8]) -> Option<(usize, Journal)> {
    let a = region.get(..COPY_SIZE).map(decode_copy).and_then(Result::ok);
    let b = region.get(COPY_SIZE..SIZE).map(decode_copy).and_then(Result::ok);
    match (a, b) {
        (Some(a), Some(b)) => Some(if newer(b.seq, a.seq) { (1, b) } else { (0, a) }),
        (Some(a), None) => Some((0, a)),
        (None, Some(b)) => Some((1, b)),
        (None, None) => None,
    }
}

/// Prepare the next write after `current` (the copy and entry read, if
/// any): `next` gets the sequence one past it, and the returned offset
/// (within the journal region) is that of the other copy.
pub fn next_write(current: Option<(usize, u64)>, next: &mut Journal) -> usize {
    match current {
        Some((copy, seq)) => {
            next.seq = seq.wrapping_add(1);
            if copy == 0 {
                COPY_SIZE
            } else {
                0
            }
        }
        None => {
            next.seq = 1;
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(seq: u64, parts: usize) -> Journal {
        Journal {
            seq,
            bundle: Digest([7; 32]),
            manifest: Digest([8; 32]),
            slot: Slot::B,
            claim_seq: 2,
            chunk: 1 << 20,
            parts: (0..parts)
                .map(|i| PartProgress { digest: Digest([i as u8; 32]), partition: 4 + i as u8, chunks: 3 * i as u32 })
                .collect(),
        }
    }

    fn region(copies: [Option<&Journal>; 2]) -> std::vec::Vec<u8> {
        let mut r = std::vec![0u8; SIZE];
        for (i, j) in copies.iter().enumerate() {
            if let Some(j) = j {
                let mut block = [0u8; COPY_SIZE];
                encode_copy(j, &mut block).unwrap();
                r[i * COPY_SIZE..][..COPY_SIZE].copy_from_slice(&block);
            }
        }
        r
    }

    #[test]
    fn a_copy_round_trips_and_the_newest_copy_wins() {
        let (a, b) = (entry(5, 2), entry(6, 32));
        assert_eq!(read(&region([Some(&a), Some(&b)])), Some((1, b.clone())));
        assert_eq!(read(&region([Some(&b), Some(&a)])), Some((0, b.clone())));
        assert_eq!(read(&region([None, Some(&a)])), Some((1, a.clone())));
        assert_eq!(read(&region([None, None])), None, "zeros are no journal");
        assert_eq!(read(&[0u8; 10]), None);
        // The sequence wraps (serial arithmetic, as the record's).
        let (old, new) = (entry(u64::MAX, 1), entry(0, 1));
        assert_eq!(read(&region([Some(&old), Some(&new)])).map(|(c, _)| c), Some(1));
    }

    #[test]
    fn a_torn_write_of_either_copy_leaves_the_other() {
        let (old, new) = (entry(5, 3), entry(6, 3));
        let before = region([Some(&old), None]);
        let mut block = [0u8; COPY_SIZE];
        encode_copy(&new, &mut block).unwrap();
        let at = next_write(read(&before).map(|(c, j)| (c, j.seq)), &mut new.clone());
        assert_eq!(at, COPY_SIZE);
        // Torn at every byte of the entry: the old entry or the new one.
        let used = HEADER + TRAILER + postcard::to_allocvec(&new).unwrap().len();
        for torn in 0..=used {
            let mut r = before.clone();
            r[at..at + torn].copy_from_slice(&block[..torn]);
            let seen = read(&r).map(|(_, j)| j);
            let want = if torn == used { &new } else { &old };
            assert_eq!(seen.as_ref(), Some(want), "torn at {torn}");
        }
    }

    #[test]
    fn every_damaged_field_is_refused() {
        let j = entry(9, 4);
        let mut block = [0u8; COPY_SIZE];
        encode_copy(&j, &mut block).unwrap();
        assert_eq!(decode_copy(&block), Ok(j.clone()));
        assert_eq!(decode_copy(&block[..COPY_SIZE - 1]), Err(JournalError::TooShort));
        let mut b = block;
        b[0] ^= 1;
        assert_eq!(decode_copy(&b), Err(JournalError::BadMagic));
        let mut b = block;
        b[8] = 2;
        assert_eq!(decode_copy(&b), Err(JournalError::Version(2)));
        let mut b = block;
        b[HEADER + 3] ^= 0x10;
        assert_eq!(decode_copy(&b), Err(JournalError::BadDigest));
        let mut b = block;
        b[12..16].copy_from_slice(&(COPY_SIZE as u32).to_le_bytes());
        assert_eq!(decode_copy(&b), Err(JournalError::BadDigest));
        // A valid digest over a payload with a byte too many.
        let len = u32::from_le_bytes(block[12..16].try_into().unwrap()) as usize;
        let mut b = [0u8; COPY_SIZE];
        b[..HEADER + len].copy_from_slice(&block[..HEADER + len]);
        b[12..16].copy_from_slice(&(len as u32 + 1).to_le_bytes());
        let d = Digest::of(&b[..HEADER + len + 1]);
        b[HEADER + len + 1..][..TRAILER].copy_from_slice(&d.0);
        assert_eq!(decode_copy(&b), Err(JournalError::Decode));
        let _ = std::string::ToString::to_string(&JournalError::Version(2));
    }

    #[test]
    fn the_largest_entry_fits_a_copy() {
        let mut j = entry(u64::MAX, MAX_PARTS);
        j.claim_seq = u64::MAX;
        for p in &mut j.parts {
            p.chunks = u32::MAX;
        }
        let mut block = [0u8; COPY_SIZE];
        assert_eq!(encode_copy(&j, &mut block), Ok(()));
        assert_eq!(decode_copy(&block), Ok(j));
    }
}
