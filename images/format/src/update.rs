//! The update state machine: every transition of the boot state record, as
//! pure functions from one record to the next.
//!
//! The device writes each returned record as one whole copy plus a flush
//! (see [`crate::bootstate`]), so each transition is atomic. The rules the
//! functions keep, whatever order they are called in:
//!
//! - the committed slot has no tries, so power cuts can never use it up;
//! - only the committed slot or a slot on trial boots (a slot being
//!   installed, a bad one, or one merely ready never does);
//! - a trial's try is spent (the record written) before anything of the
//!   slot is mounted: [`plan_boot`] returns that record;
//! - the rollback floor rises only at [`commit`];
//! - an install never writes the committed slot nor a layer partition the
//!   committed manifest uses ([`plan_layers`]), and is refused while a trial
//!   is pending ([`claim`]);
//! - an install writes a boot image only into the boot entry the running
//!   system did not start from, and only when that one is blessed
//!   ([`boot_entry_target`]); the image gets its entry name only after the
//!   stage write, so the loader never starts it without a trial that
//!   expects it ([`entry_to_finish`] completes that rename after a cut).

use alloc::vec::Vec;
use core::fmt;

use crate::bootentry::{Assessment, Entry};
use crate::bootstate::{BootState, LayerSlot, Slot, SlotStatus, Trial, MAX_LAYER_SLOTS};
use crate::digest::Digest;

/// What this boot does, decided from the record before anything is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// The manifest slot to boot.
    pub slot: Slot,
    /// Why that slot.
    pub kind: BootKind,
    /// The record to write, and flush, before mounting anything (a try
    /// spent, or a trial ended), if the record changes.
    pub write: Option<BootState>,
}

/// Why a slot boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootKind {
    /// The committed slot, with no trial pending.
    Committed,
    /// The slot on trial; `tries_left` after this boot.
    Trial {
        /// Boots left after this one.
        tries_left: u8,
    },
    /// A trial ended before this boot could start it: the committed slot
    /// boots and the trial's slot is now bad.
    TrialEnded {
        /// The slot whose trial ended.
        slot: Slot,
        /// Why.
        reason: TrialFailure,
    },
}

/// Why a trial failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialFailure {
    /// Every try was spent without a commit (the device hung, crashed, was
    /// reset, or lost power each time).
    OutOfTries,
    /// The trial wrote a boot entry, but the loader started the other one:
    /// the new kernel or init never reached this point.
    LoaderFellBack {
        /// The entry the loader started.
        booted: Slot,
    },
    /// The trial's manifest was refused (signature, product, floor, layers).
    Refused,
    /// A critical container stopped, restarted or was OOM-killed within the
    /// commit window.
    Unhealthy,
    /// Asked for over the control socket (`health fail`).
    Requested,
}

impl TrialFailure {
    /// Its name in events.
    pub fn name(self) -> &'static str {
        match self {
            TrialFailure::OutOfTries => "out-of-tries",
            TrialFailure::LoaderFellBack { .. } => "loader-fell-back",
            TrialFailure::Refused => "manifest-refused",
            TrialFailure::Unhealthy => "unhealthy",
            TrialFailure::Requested => "requested",
        }
    }
}

impl fmt::Display for TrialFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decide this boot. `booted_entry` is the ESP boot slot the loader
/// started, when known (a UEFI boot through systemd-boot).
pub fn plan_boot(state: &BootState, booted_entry: Option<Slot>) -> BootPlan {
    let committed = BootPlan { slot: state.committed, kind: BootKind::Committed, write: None };
    let Some(trial) = state.trial else {
        return committed;
    };
    let ended = |reason| BootPlan {
        slot: state.committed,
        kind: BootKind::TrialEnded { slot: trial.slot, reason },
        write: Some(fail_trial(state)),
    };
    if trial.slot == state.committed || state.status_of(trial.slot) != SlotStatus::Ready {
        // Not a trial any transition here writes: end it rather than boot
        // something unproven.
        return ended(TrialFailure::Refused);
    }
    match booted_entry {
        Some(booted) if trial.boot_entry.is_some_and(|e| e != booted) => {
            return ended(TrialFailure::LoaderFellBack { booted });
        }
        _ => {}
    }
    let Some(tries_left) = trial.tries_left.checked_sub(1) else {
        return ended(TrialFailure::OutOfTries);
    };
    let mut spent = state.clone();
    spent.trial = Some(Trial { tries_left, ..trial });
    BootPlan { slot: trial.slot, kind: BootKind::Trial { tries_left }, write: Some(spent) }
}

/// End the pending trial: its slot is bad, the committed slot boots. The
/// floor and the layer map are unchanged. Without a trial, the same record.
pub fn fail_trial(state: &BootState) -> BootState {
    let mut next = state.clone();
    if let Some(t) = state.trial {
        if t.slot != state.committed {
            next.set_status(t.slot, SlotStatus::Bad);
        }
    }
    next.trial = None;
    next
}

/// Why a commit was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// No trial is pending for this slot.
    NotOnTrial(Slot),
    /// The floor the manifest sets is above its own version.
    FloorAboveVersion {
        /// The floor.
        floor: u64,
        /// The version.
        version: u64,
    },
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::NotOnTrial(s) => write!(f, "slot {s} is not on trial"),
            CommitError::FloorAboveVersion { floor, version } => {
                write!(f, "floor {floor} is above the manifest's version {version}")
            }
        }
    }
}

/// Commit the trial of `slot` whose manifest has `version` and sets
/// `floor`: it becomes the committed slot, good, and the floor rises (never
/// falls). The old committed slot stays good: the next install writes it.
pub fn commit(state: &BootState, slot: Slot, version: u64, floor: u64) -> Result<BootState, CommitError> {
    if state.trial.map(|t| t.slot) != Some(slot) {
        return Err(CommitError::NotOnTrial(slot));
    }
    if floor > version {
        return Err(CommitError::FloorAboveVersion { floor, version });
    }
    let mut next = state.clone();
    next.committed = slot;
    next.set_status(slot, SlotStatus::Good);
    next.trial = None;
    next.rollback_floor = next.rollback_floor.max(floor);
    Ok(next)
}

/// Why an install is refused before it writes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallRefusal {
    /// A trial is pending: it must commit or fail first.
    TrialPending(Slot),
    /// The manifest's version is below the device's floor.
    BelowFloor {
        /// The manifest's version.
        version: u64,
        /// The floor.
        floor: u64,
    },
    /// The manifest is not newer than the committed one.
    NotNewer {
        /// The manifest's version.
        version: u64,
        /// The committed manifest's version.
        committed: u64,
    },
    /// A layer the manifest needs is neither on the device nor in the bundle.
    MissingLayer(Digest),
    /// No free layer partition is large enough for a layer.
    NoFreePartition {
        /// The layer.
        digest: Digest,
        /// Bytes it needs.
        bytes: u64,
    },
    /// The layer map would overflow.
    TooManyLayers,
    /// The bundle carries a boot image, but this boot did not come from a
    /// boot entry (no boot loader said which): there is no entry known to
    /// be free to write it into.
    NoBootEntry,
    /// The bundle carries a boot image, but the entry this boot came from
    /// is itself unproven (on trial, or bad): the other entry may be the
    /// only one known to boot, and is never overwritten.
    BootEntryUnproven(Slot),
}

impl InstallRefusal {
    /// Its name in events.
    pub fn name(&self) -> &'static str {
        match self {
            InstallRefusal::TrialPending(_) => "trial-pending",
            InstallRefusal::BelowFloor { .. } => "below-floor",
            InstallRefusal::NotNewer { .. } => "not-newer",
            InstallRefusal::MissingLayer(_) => "missing-layer",
            InstallRefusal::NoFreePartition { .. } => "no-free-partition",
            InstallRefusal::TooManyLayers => "too-many-layers",
            InstallRefusal::NoBootEntry => "no-boot-entry",
            InstallRefusal::BootEntryUnproven(_) => "boot-entry-unproven",
        }
    }
}

impl fmt::Display for InstallRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallRefusal::TrialPending(s) => write!(f, "slot {s} is on trial: commit or roll back first"),
            InstallRefusal::BelowFloor { version, floor } => {
                write!(f, "version {version} is below the rollback floor {floor}")
            }
            InstallRefusal::NotNewer { version, committed } => {
                write!(f, "version {version} is not newer than the committed version {committed}")
            }
            InstallRefusal::MissingLayer(d) => {
                write!(f, "layer {d:?} is neither on the device nor in the bundle (a thin bundle for another base?)")
            }
            InstallRefusal::NoFreePartition { digest, bytes } => write!(
                f,
                "no free layer partition holds layer {digest:?} ({bytes} bytes) without touching the committed manifest's"
            ),
            InstallRefusal::TooManyLayers => write!(f, "the layer map would exceed {MAX_LAYER_SLOTS} entries"),
            InstallRefusal::NoBootEntry => write!(
                f,
                "the bundle carries a boot image, but this boot did not start from a boot entry (no boot loader named one)"
            ),
            InstallRefusal::BootEntryUnproven(s) => write!(
                f,
                "the bundle carries a boot image, but boot entry {s}, which this boot started from, is not blessed yet"
            ),
        }
    }
}

/// Check a manifest's version before anything is planned: at or above the
/// floor, and newer than the committed manifest's.
pub fn check_version(state: &BootState, version: u64, committed_version: u64) -> Result<(), InstallRefusal> {
    if let Some(t) = state.trial {
        return Err(InstallRefusal::TrialPending(t.slot));
    }
    if version < state.rollback_floor {
        return Err(InstallRefusal::BelowFloor { version, floor: state.rollback_floor });
    }
    if version <= committed_version {
        return Err(InstallRefusal::NotNewer { version, committed: committed_version });
    }
    Ok(())
}

/// A layer partition on the disk: its number and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// NN of `cairn-layer-NN`.
    pub number: u8,
    /// Bytes.
    pub bytes: u64,
}

/// A layer the new manifest needs, and the bytes its partition must hold
/// (image, padding and hash tree), or `None` when the bundle lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    /// Layer digest.
    pub digest: Digest,
    /// Bytes to write, if the bundle carries it.
    pub carried: Option<u64>,
}

/// Where each layer of the new manifest comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerPlan {
    /// Layers already on the device: never read from the bundle, never
    /// written.
    pub reuse: Vec<LayerSlot>,
    /// Layers to write, and where.
    pub write: Vec<LayerSlot>,
}

/// Plan the layers of an install. `committed` are the committed manifest's
/// layer digests (their partitions are never written); `needed` the new
/// manifest's layers; `partitions` every layer partition on the disk.
/// Reuses every layer the map knows, by digest; writes the rest into
/// partitions that hold nothing the committed manifest uses, empty ones
/// first, lowest number first, the smallest that fits.
pub fn plan_layers(
    state: &BootState,
    committed: &[Digest],
    needed: &[Needed],
    partitions: &[Partition],
) -> Result<LayerPlan, InstallRefusal> {
    let protected: Vec<u8> = committed.iter().filter_map(|d| state.partition_of(d)).collect();
    let mut plan = LayerPlan::default();
    for n in needed {
        if plan.reuse.iter().chain(&plan.write).any(|s| s.digest == n.digest) {
            continue;
        }
        if let Some(p) = state.partition_of(&n.digest) {
            plan.reuse.push(LayerSlot { digest: n.digest, partition: p });
        }
    }
    for n in needed {
        if plan.reuse.iter().chain(&plan.write).any(|s| s.digest == n.digest) {
            continue;
        }
        let bytes = n.carried.ok_or(InstallRefusal::MissingLayer(n.digest))?;
        let taken = |p: u8| protected.contains(&p) || plan.reuse.iter().chain(&plan.write).any(|s| s.partition == p);
        let holds_something = |p: u8| state.layer_slots.iter().any(|s| s.partition == p);
        let best = partitions
            .iter()
            .filter(|p| p.bytes >= bytes && !taken(p.number))
            .min_by_key(|p| (holds_something(p.number), p.bytes, p.number))
            .ok_or(InstallRefusal::NoFreePartition { digest: n.digest, bytes })?;
        plan.write.push(LayerSlot { digest: n.digest, partition: best.number });
    }
    Ok(plan)
}

/// The first durable write of an install: the target slot (the one not
/// committed) is `installing`, so it never boots while it is written, and
/// the map forgets every partition the plan writes, before any is written.
pub fn claim(state: &BootState, plan: &LayerPlan) -> Result<BootState, InstallRefusal> {
    if let Some(t) = state.trial {
        return Err(InstallRefusal::TrialPending(t.slot));
    }
    let mut next = state.clone();
    next.set_status(state.committed.other(), SlotStatus::Installing);
    next.layer_slots.retain(|s| !plan.write.iter().any(|w| w.partition == s.partition));
    Ok(next)
}

/// The last durable write of an install, once every layer and the manifest
/// are written and read back: the target slot is ready and on trial with
/// `tries`, and the map holds exactly the committed and the new manifest's
/// layers. `boot_entry` is the boot entry the install wrote the bundle's
/// boot image into, if it carried one.
pub fn stage(
    state: &BootState,
    committed: &[Digest],
    plan: &LayerPlan,
    tries: u8,
    boot_entry: Option<Slot>,
) -> Result<BootState, InstallRefusal> {
    let target = state.committed.other();
    let mut next = state.clone();
    next.set_status(target, SlotStatus::Ready);
    next.trial = Some(Trial { slot: target, tries_left: tries, boot_entry });
    let keep = |s: &LayerSlot| committed.contains(&s.digest) || plan.reuse.contains(s);
    next.layer_slots.retain(|s| keep(s));
    for w in &plan.write {
        if !next.layer_slots.iter().any(|s| s == w) {
            next.layer_slots.push(*w).map_err(|_| InstallRefusal::TooManyLayers)?;
        }
    }
    Ok(next)
}

/// The boot entry an install writes a bundle's boot image into: the one
/// this boot did not start from (`booted`, the entry the loader started,
/// as its name is on the ESP now). Refused when the loader named no entry,
/// or when the booted entry is not blessed: then the other one may be the
/// last entry known to boot.
pub fn boot_entry_target(booted: Option<Entry>) -> Result<Slot, InstallRefusal> {
    let booted = booted.ok_or(InstallRefusal::NoBootEntry)?;
    match booted.assessment() {
        Assessment::Blessed => Ok(booted.slot.other()),
        Assessment::Trial { .. } | Assessment::Bad => Err(InstallRefusal::BootEntryUnproven(booted.slot)),
    }
}

/// The boot entry whose image an install wrote and staged, but which did
/// not get its entry name before the power went (the rename comes after
/// the stage write): the init renames it and reboots, instead of failing
/// the trial for the loader "falling back". `pending` says whether the ESP
/// holds the unnamed image of an entry; `booted` is the entry the loader
/// started, when known.
pub fn entry_to_finish(state: &BootState, booted: Option<Slot>, pending: impl Fn(Slot) -> bool) -> Option<Slot> {
    let entry = state.trial?.boot_entry?;
    (booted != Some(entry) && pending(entry)).then_some(entry)
}

#[cfg(test)]
mod tests;
