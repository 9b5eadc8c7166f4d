//! The install journal as the installer child reads it from `cairn-state`
//! (after the boot state record's copies): `journal::read` (two copies, the
//! valid one with the highest sequence) and `journal::decode_copy`.
//!
//! Each input is checked twice: as found, and with the sha256 of every copy
//! that carries the magic, the version and a length that fits recomputed,
//! so the fuzzer also explores the postcard decoder behind the digest.
//! Bytes past the two copies are ignored by the device; the target uses the
//! first two of them to choose where a simulated power cut tears a write.
//!
//! Checks, besides never panicking:
//! - `read` agrees with `decode_copy` of each copy and the documented
//!   choice (newest by serial arithmetic, copy 0 on a tie, none below one
//!   copy);
//! - a decoded entry re-encodes with `encode_copy`, decodes back to the
//!   same value, and re-encoding that is byte-identical;
//! - with a repaired digest a copy is never `BadDigest`;
//! - the writer protocol (`next_write`): the next entry goes over the other
//!   copy with the next sequence and is what `read` returns after it; a
//!   write torn at any byte leaves the old entry, the new one, or (found
//!   by this target: `artifacts-found/install_journal/torn-write-revives-a-torn-copy`)
//!   an entry with the new sequence that the overwritten copy already held
//!   past the torn prefix, in a copy that did not read before: one an
//!   earlier write tore with its first sector lost, which the new header
//!   completes. That entry was itself written after the chunks it counts
//!   were flushed, for the claim it names (an entry of any other claim is
//!   discarded by the installer's record check), so it is still true; and
//!   the read back of every part decides anyway. The writer's region is
//!   always both whole copies (the device reads 8 KiB); a shorter input is
//!   padded with zeros first, as a partition would be
//!   (`artifacts-found/install_journal/short-region-copy1`: a copy cut short
//!   in the input, whole once padded, was taken for a revival).

#![no_main]

use cairn_format::bootstate::COPY_SIZE;
use cairn_format::journal::{decode_copy, encode_copy, next_write, read, Journal, JournalError, MAGIC, SIZE, VERSION};
use cairn_format::Digest;
use cairn_fuzz::display_len;
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 16;
const TRAILER: usize = 32;

fuzz_target!(|data: &[u8]| {
    check_region(data);
    let mut fixed = data.to_vec();
    if repair_digests(&mut fixed) {
        check_region(&fixed);
    }
});

/// Recompute the sha256 of every copy with the magic, this version and a
/// length that fits. Returns whether anything changed.
fn repair_digests(region: &mut [u8]) -> bool {
    let mut changed = false;
    for copy in 0..2 {
        let start = copy * COPY_SIZE;
        let Some(block) = region.get_mut(start..start + COPY_SIZE) else { break };
        if block[..8] != MAGIC || block[8..12] != VERSION.to_le_bytes() {
            continue;
        }
        let len = u32::from_le_bytes([block[12], block[13], block[14], block[15]]) as usize;
        if len > COPY_SIZE - HEADER - TRAILER {
            continue;
        }
        let d = Digest::of(&block[..HEADER + len]);
        changed |= block[HEADER + len..HEADER + len + TRAILER] != d.0;
        block[HEADER + len..HEADER + len + TRAILER].copy_from_slice(&d.0);
        let repaired = decode_copy(block);
        assert_ne!(repaired, Err(JournalError::BadDigest), "copy {copy} with a correct sha256 is BadDigest");
    }
    changed
}

fn check_region(region: &[u8]) {
    let a = region.get(..COPY_SIZE).map(decode_copy);
    let b = region.get(COPY_SIZE..SIZE).map(decode_copy);
    for copy in [&a, &b].into_iter().flatten() {
        match copy {
            Ok(j) => check_round_trip(j),
            Err(e) => {
                display_len(e);
            }
        }
    }
    let newer = |x: u64, y: u64| (x.wrapping_sub(y) as i64) > 0;
    let expected = match (&a, &b) {
        (Some(Ok(a)), Some(Ok(b))) if newer(b.seq, a.seq) => Some((1, b.clone())),
        (Some(Ok(a)), _) => Some((0, a.clone())),
        (_, Some(Ok(b))) => Some((1, b.clone())),
        _ => None,
    };
    let found = read(region);
    assert_eq!(found, expected);

    // The next entry: over the other copy, next sequence, read back as is.
    // The device's region is both whole copies: pad a short input.
    let mut start = region.get(..SIZE).unwrap_or(region).to_vec();
    start.resize(SIZE, 0);
    let found = read(&start);
    let mut next = match &found {
        Some((_, j)) => j.clone(),
        None => return,
    };
    if let Some(p) = next.parts.first_mut() {
        p.chunks = p.chunks.wrapping_add(1);
    }
    let current = found.as_ref().map(|(c, j)| (*c, j.seq));
    let at = next_write(current, &mut next);
    let Some((copy, old)) = found else { return };
    assert_eq!(at, if copy == 0 { COPY_SIZE } else { 0 }, "the next entry goes over the other copy");
    assert_eq!(next.seq, old.seq.wrapping_add(1));
    let mut block = [0u8; COPY_SIZE];
    if encode_copy(&next, &mut block).is_err() {
        return;
    }
    let mut after = start.clone();
    after[at..at + COPY_SIZE].copy_from_slice(&block);
    assert_eq!(read(&after), Some((at / COPY_SIZE, next.clone())), "the entry just written is not the one read");

    // A power cut after `torn` bytes of the new copy reached the disk.
    let torn = match region.get(SIZE..SIZE + 2) {
        Some(&[lo, hi]) => u16::from_le_bytes([lo, hi]) as usize % (COPY_SIZE + 1),
        _ => HEADER + 1,
    };
    let mut cut = start.clone();
    cut[at..at + torn].copy_from_slice(&block[..torn]);
    let seen = read(&cut);
    if seen == Some((copy, old.clone())) || seen == Some((at / COPY_SIZE, next.clone())) {
        return;
    }
    // A revived copy: the new header over what the copy already held.
    let Some((c, revived)) = seen else { panic!("a write torn at byte {torn} lost the journal") };
    assert_eq!((c, revived.seq), (at / COPY_SIZE, next.seq), "a write torn at byte {torn} left {revived:?}");
    let before = decode_copy(&start[at..at + COPY_SIZE]);
    assert!(before.is_err(), "a valid copy newer than the newest: {before:?}");
    assert!(cut[at + torn..at + COPY_SIZE] == start[at + torn..at + COPY_SIZE]);
}

fn check_round_trip(j: &Journal) {
    let mut block = [0u8; COPY_SIZE];
    assert_eq!(encode_copy(j, &mut block), Ok(()), "a decoded entry does not re-encode: {j:?}");
    assert_eq!(decode_copy(&block).as_ref(), Ok(j), "a re-encoded entry decodes to another value");
    let mut again = [0u8; COPY_SIZE];
    assert_eq!(encode_copy(j, &mut again), Ok(()));
    assert!(block == again, "encode_copy is not deterministic");
    display_len(&j.slot);
}
