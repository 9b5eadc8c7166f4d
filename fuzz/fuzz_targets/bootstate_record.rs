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
//! - the update transitions on any decoded state (`update::plan_boot`,
//!   `fail_trial`, `commit`): only the committed slot or a ready trial of
//!   the other slot boots, a trial boot spends exactly one try, the floor
//!   never changes except at commit and never falls there;
//! - the writer protocol, through `install::write_record` (the device's
//!   writer: older copy, flush, read back) on an in-memory partition: the
//!   next state (the boot's write, or the trial's end) is what
//!   `read_record` returns after it; a write torn at any byte leaves either
//!   the old or the new state, never anything else.
//!
//! Copies with either magic (`CAIRNBS2`, and the factory's `CAIRNBS1`) get
//! their checksum repaired.

#![no_main]

use cairn_format::bootstate::{
    decode_copy, encode_copy, newer, read_record, BootState, BootStateError, Slot, SlotStatus, COPY_SIZE, MAGIC,
    MAGIC_V1, RECORD_SIZE,
};
use cairn_format::install::{self, Storage, Target};
use cairn_format::update::{self, BootKind};
use cairn_fuzz::display_len;
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
        if block[..8] != MAGIC && block[..8] != MAGIC_V1 {
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
        (Some(Ok(a)), Some(Ok(b))) if newer(b.seq, a.seq) => Ok((1, b.clone())),
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

    let next = check_transitions(&state, region.get(RECORD_SIZE + 2).copied().unwrap_or(0));

    // The next write goes to the other copy and is what the reader sees next.
    let mut block = [0u8; COPY_SIZE];
    let mut expected = next.clone();
    expected.seq = state.seq.wrapping_add(1);
    if encode_copy(&expected, &mut block).is_err() {
        // The new state is one varint longer at most; it can only fail to
        // fit when the old one filled the copy.
        return;
    }
    let mut start = region.get(..RECORD_SIZE).unwrap_or(region).to_vec();
    start.resize(RECORD_SIZE, 0);
    let mut mem = Mem { region: start.clone(), writes: vec![] };
    let written = install::write_record(&mut mem, current, state.seq, next);
    let offset = if current == 0 { COPY_SIZE } else { 0 };
    assert_eq!(written, Ok((1 - current, expected.clone())), "write_record");
    assert_eq!(mem.writes, [(offset as u64, COPY_SIZE)], "one whole copy, over the other one");
    let after = read_record(&mem.region);
    assert_eq!(
        after,
        Ok((1 - current, expected.clone())),
        "the state just written is not the one read back (old seq {})",
        state.seq
    );

    // A power cut after `torn` bytes of the new copy reached the disk.
    let torn = match region.get(RECORD_SIZE..RECORD_SIZE + 2) {
        Some(&[lo, hi]) => u16::from_le_bytes([lo, hi]) as usize % (COPY_SIZE + 1),
        _ => HEADER + 1,
    };
    let mut cut = start;
    cut[offset..offset + torn].copy_from_slice(&block[..torn]);
    let seen = read_record(&cut);
    let old = Ok((current, state.clone()));
    let new = Ok((1 - current, expected));
    assert!(seen == old || seen == new, "a write torn at byte {torn} left {seen:?}");
}

/// The pure transitions on a decoded state; returns the state a device
/// would write next (the boot's write, else the trial's end, else a
/// commit, else the same state).
fn check_transitions(state: &BootState, pick: u8) -> BootState {
    let plan = update::plan_boot(state, None);
    match plan.kind {
        BootKind::Committed => {
            assert_eq!(plan.slot, state.committed);
            assert!(plan.write.is_none(), "a committed boot writes nothing");
        }
        BootKind::Trial { tries_left } => {
            let t = state.trial.expect("a trial boot without a trial");
            assert_ne!(t.slot, state.committed, "the committed slot on trial");
            assert_eq!(plan.slot, t.slot);
            assert_eq!(state.status_of(t.slot), SlotStatus::Ready, "a slot not ready boots");
            assert_eq!(Some(tries_left), t.tries_left.checked_sub(1), "a trial boot spends exactly one try");
            let w = plan.write.as_ref().expect("a try is written before mounting");
            assert_eq!(w.trial.map(|t| t.tries_left), Some(tries_left));
        }
        BootKind::TrialEnded { slot, .. } => {
            assert_eq!(plan.slot, state.committed);
            let w = plan.write.as_ref().expect("an ended trial is written");
            assert_eq!(w.trial, None);
            if slot != state.committed {
                assert_eq!(w.status_of(slot), SlotStatus::Bad);
            }
        }
    }
    if let Some(w) = &plan.write {
        assert_eq!((w.rollback_floor, w.committed), (state.rollback_floor, state.committed), "a boot moved the floor");
    }
    // Booted from a boot entry: a trial that wrote the other entry ends,
    // and only an entry the trial wrote is ever finished after a cut.
    for booted in [Slot::A, Slot::B] {
        let p = update::plan_boot(state, Some(booted));
        if let Some(t) = state.trial.filter(|t| t.boot_entry.is_some_and(|e| e != booted)) {
            assert_eq!(p.slot, state.committed, "a trial whose image the loader did not start booted");
            assert!(matches!(p.kind, BootKind::TrialEnded { .. }), "{t:?} booted from {booted}: {:?}", p.kind);
        }
        let finish = update::entry_to_finish(state, Some(booted), |_| true);
        assert_eq!(finish, state.trial.and_then(|t| t.boot_entry).filter(|e| *e != booted));
    }
    let failed = update::fail_trial(state);
    assert_eq!((failed.trial, failed.rollback_floor, failed.committed), (None, state.rollback_floor, state.committed));
    let slot = if pick & 1 == 0 { Slot::A } else { Slot::B };
    let (version, floor) = (u64::from(pick >> 1) * 3, u64::from(pick >> 1));
    if let Ok(c) = update::commit(state, slot, version, floor) {
        assert_eq!(state.trial.map(|t| t.slot), Some(slot));
        assert_eq!((c.committed, c.trial, c.status_of(slot)), (slot, None, SlotStatus::Good));
        assert_eq!(c.rollback_floor, state.rollback_floor.max(floor), "the floor never falls");
    }
    match (plan.write, pick % 3) {
        (Some(w), _) => w,
        (None, 0) => failed,
        _ => state.clone(),
    }
}

/// The state partition in memory: what the device's writer does to it.
struct Mem {
    region: Vec<u8>,
    writes: Vec<(u64, usize)>,
}

impl Storage for Mem {
    type Error = ();
    fn read(&mut self, _: Target, offset: u64, buf: &mut [u8]) -> Result<usize, ()> {
        let start = (offset as usize).min(self.region.len());
        let n = buf.len().min(self.region.len() - start);
        buf[..n].copy_from_slice(&self.region[start..start + n]);
        Ok(n)
    }
    fn read_direct(&mut self, t: Target, offset: u64, buf: &mut [u8]) -> Result<usize, ()> {
        assert_eq!((offset % 4096, buf.len() % 4096), (0, 0), "unaligned direct read");
        self.read(t, offset, buf)
    }
    fn write(&mut self, t: Target, offset: u64, data: &[u8]) -> Result<(), ()> {
        assert_eq!(t, Target::State);
        let at = offset as usize;
        self.region[at..at + data.len()].copy_from_slice(data);
        self.writes.push((offset, data.len()));
        Ok(())
    }
    fn flush(&mut self, _: Target) -> Result<(), ()> {
        Ok(())
    }
    fn begin_entry(&mut self, _: Slot) -> Result<(), ()> {
        panic!("the record writer wrote a boot entry")
    }
    fn finish_entry(&mut self, _: Slot, _: u8) -> Result<(), ()> {
        panic!("the record writer named a boot entry")
    }
}

fn check_round_trip(s: &BootState) {
    let mut block = [0u8; COPY_SIZE];
    assert_eq!(encode_copy(s, &mut block), Ok(()), "decoded state does not re-encode: {s:?}");
    assert_eq!(decode_copy(&block).as_ref(), Ok(s), "re-encoded state decodes to another value");
    let mut again = [0u8; COPY_SIZE];
    assert_eq!(encode_copy(s, &mut again), Ok(()));
    assert!(block == again, "encode_copy is not deterministic");
    display_len(&s.committed);
    let _ = s.committed.partition();
    for slot in [Slot::A, Slot::B] {
        display_len(&s.status_of(slot));
    }
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
