//! The boot state record as `cairn-init` reads it from the `cairn-state`
//! partition: `bootstate::read_record` (two copies, pick the valid one with
//! the highest sequence) and `bootstate::decode_copy`.
//!
//! Each input is checked twice: as found, and with the crc32 of every copy
//! that carries the magic recomputed, so the fuzzer also explores the
//! postcard decoder behind the checksum. Bytes past the two copies are
//! ignored by the device; the target uses the first two of them to choose
//! where a simulated power cut tears a write.
//!
//! Checks, besides never panicking:
//! - `read_record` agrees with `decode_copy` of each copy and the documented
//!   choice (highest sequence, copy 0 on a tie, `TooShort` below one copy);
//! - a decoded state re-encodes with `encode_copy`, decodes back to the same
//!   value, and re-encoding that is byte-identical;
//! - with a repaired checksum a copy is never `BadChecksum`;
//! - the writer protocol: after `next_write` and writing the next state into
//!   the returned copy, `read_record` returns that new state; a write torn at
//!   any byte leaves either the old or the new state, never anything else.

#![no_main]

use cairn_fuzz::display_len;
use cairn_format::bootstate::{
    decode_copy, encode_copy, next_write, read_record, BootState, BootStateError, COPY_SIZE, MAGIC, RECORD_SIZE,
};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 16;

fuzz_target!(|data: &[u8]| {
    check_region(data);
    let mut fixed = data.to_vec();
    if repair_checksums(&mut fixed) {
        check_region(&fixed);
    }
});

/// Recompute the crc32 of every copy with the magic and a length that fits.
/// Returns whether anything changed.
fn repair_checksums(region: &mut [u8]) -> bool {
    let mut changed = false;
    for copy in 0..2 {
        let start = copy * COPY_SIZE;
        let Some(block) = region.get_mut(start..start + COPY_SIZE) else { break };
        if block[..8] != MAGIC {
            continue;
        }
        let len = u32::from_le_bytes([block[8], block[9], block[10], block[11]]) as usize;
        if len > COPY_SIZE - HEADER {
            continue;
        }
        let crc = crc32(&block[HEADER..HEADER + len]).to_le_bytes();
        changed |= block[12..16] != crc;
        block[12..16].copy_from_slice(&crc);
        let repaired = decode_copy(block);
        assert_ne!(repaired, Err(BootStateError::BadChecksum), "copy {copy} with a correct crc32 is BadChecksum");
    }
    changed
}

fn check_region(region: &[u8]) {
    // Each copy on its own, and the whole input as one block.
    let a = region.get(..COPY_SIZE).map(decode_copy);
    let b = region.get(COPY_SIZE..RECORD_SIZE).map(decode_copy);
    for copy in [&a, &b].into_iter().flatten() {
        match copy {
            Ok(s) => check_round_trip(s),
            Err(e) => {
                display_len(e);
            }
        }
    }
    if let Ok(s) = decode_copy(region) {
        check_round_trip(&s);
    }

    // The choice between the copies.
    let record = read_record(region);
    let expected = match (&a, &b) {
        (None, _) => Err(BootStateError::TooShort),
        (Some(Ok(a)), Some(Ok(b))) if b.seq > a.seq => Ok((1, b.clone())),
        (Some(Ok(a)), _) => Ok((0, a.clone())),
        (_, Some(Ok(b))) => Ok((1, b.clone())),
        _ => Err(BootStateError::NoValidCopy),
    };
    assert_eq!(record, expected);
    let Ok((current, state)) = record else { return };
    for slot in &state.layer_slots {
        let first = state.layer_slots.iter().find(|s| s.digest == slot.digest).map(|s| s.partition);
        assert_eq!(state.partition_of(&slot.digest), first);
    }

    // The next write goes to the other copy and is what the reader sees next.
    let mut next = state.clone();
    next.trial = !next.trial;
    next.attempts_left = next.attempts_left.wrapping_sub(1);
    let offset = next_write(current, state.seq, &mut next);
    assert_eq!(offset, if current == 0 { COPY_SIZE } else { 0 });
    assert_eq!(next.seq, state.seq.wrapping_add(1));
    let mut block = [0u8; COPY_SIZE];
    if encode_copy(&next, &mut block).is_err() {
        // The new state is one varint longer at most; it can only fail to
        // fit when the old one filled the copy.
        return;
    }
    let mut written = region.get(..RECORD_SIZE).unwrap_or(region).to_vec();
    written.resize(RECORD_SIZE, 0);
    written[offset..offset + COPY_SIZE].copy_from_slice(&block);
    let after = read_record(&written);
    assert_eq!(
        after,
        Ok((1 - current, next.clone())),
        "the state just written is not the one read back (old seq {})",
        state.seq
    );

    // A power cut after `torn` bytes of the new copy reached the disk.
    let torn = match region.get(RECORD_SIZE..RECORD_SIZE + 2) {
        Some(&[lo, hi]) => u16::from_le_bytes([lo, hi]) as usize % (COPY_SIZE + 1),
        _ => HEADER + 1,
    };
    let mut cut = region.get(..RECORD_SIZE).unwrap_or(region).to_vec();
    cut.resize(RECORD_SIZE, 0);
    cut[offset..offset + torn].copy_from_slice(&block[..torn]);
    let seen = read_record(&cut);
    let old = Ok((current, state.clone()));
    let new = Ok((1 - current, next));
    assert!(seen == old || seen == new, "a write torn at byte {torn} left {seen:?}");
}

fn check_round_trip(s: &BootState) {
    let mut block = [0u8; COPY_SIZE];
    assert_eq!(encode_copy(s, &mut block), Ok(()), "decoded state does not re-encode: {s:?}");
    assert_eq!(decode_copy(&block).as_ref(), Ok(s), "re-encoded state decodes to another value");
    let mut again = [0u8; COPY_SIZE];
    assert_eq!(encode_copy(s, &mut again), Ok(()));
    assert!(block == again, "encode_copy is not deterministic");
    display_len(&s.active);
    let _ = s.active.partition();
}

/// crc32 (IEEE), bitwise: independent of the crc32fast used by the code under test.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
