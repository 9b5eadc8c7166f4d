//! The boot sequence after the early mounts: partitions, boot state, the
//! signed manifest, and the verified layers (behind dm-verity by default).

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_format::bootstate::{BootState, Slot, SlotStatus};
use cairn_format::envelope::{self, OpenError};
use cairn_format::manifest::Manifest;
use cairn_format::update::{self, BootKind, TrialFailure};

use crate::bootslot::{self, BootSlot, LoaderInfo};
use crate::cmdline::Cmdline;
use crate::event::event;
use crate::partitions::{self, ChooseError, Partitions, WaitError, Want};
use crate::record::Record;
use crate::storage::{self, StorageError};
use crate::trust::{self, Trust};

// The fallback rollback floor (build.rs: `CAIRN_ROLLBACK_FLOOR`, default 0).
include!(concat!(env!("OUT_DIR"), "/rollback_floor.rs"));

/// A booted system: what the supervisor needs.
pub struct Booted {
    /// The verified manifest.
    pub manifest: Manifest,
    /// Layer name → mount directory, for the layers that verified.
    pub layer_dirs: BTreeMap<String, String>,
    /// Partitions of the boot disk by GPT name.
    pub partitions: Partitions,
    /// Kernel name of the boot disk ("vda").
    pub disk: String,
    /// The layers' dm-verity targets (empty with `layer_check = digest`).
    pub targets: Vec<storage::LayerTarget>,
    /// The boot state record (commit and rollback write it).
    pub record: Record,
    /// The manifest slot is on trial this boot.
    pub trial: Option<TrialBoot>,
    /// The initramfs's trusted keys and product (the installer checks
    /// bundles against them).
    pub trust: Option<Trust>,
    /// The data partition is not mounted yet: no container needs it to
    /// start, so it is mounted once the first starts are under way
    /// ([`storage::mount_data`], then [`crate::volumes::report_unused`]).
    pub data_deferred: bool,
}

/// Why the device has nothing to run.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// No boot disk appeared in time.
    #[error("partitions missing after {timeout_ms} ms: the boot disk ({})", match guid {
        Some(g) => format!("no disk with GPT disk GUID {g}"),
        None => "no disk holds cairn-* partitions".into(),
    })]
    NoBootDisk {
        /// The GPT disk GUID `cairn.disk=` asked for, if any.
        guid: Option<String>,
        /// The wait.
        timeout_ms: u32,
    },
    /// Required partitions of the boot disk did not appear in time.
    #[error("partitions missing after {timeout_ms} ms: {} on {disk}", missing.join(","))]
    Partitions {
        /// The boot disk.
        disk: String,
        /// GPT names missing.
        missing: Vec<&'static str>,
        /// The wait.
        timeout_ms: u32,
    },
    /// No single boot disk: several candidates.
    #[error("{reason}: {}", disks.join(","))]
    AmbiguousDisk {
        /// Why several disks qualify.
        reason: &'static str,
        /// Their kernel names.
        disks: Vec<String>,
    },
    /// A system partition name appears twice on the boot disk.
    #[error("partition name {name} appears twice on boot disk {disk}")]
    DuplicatePartition {
        /// The boot disk.
        disk: String,
        /// The GPT name.
        name: String,
    },
    /// Reading a partition or the boot state.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// Neither manifest slot holds an acceptable manifest.
    #[error("no acceptable manifest: {0}")]
    Manifest(Refusals),
    /// The staged trial's boot image had not been given its entry name
    /// (a power cut right after the stage write): it has now, and the
    /// device restarts so the loader starts it. Not a failure.
    #[error("boot entry {0}'s staged image was named after a power cut: restarting into it")]
    EntryNamed(Slot),
}

/// Why one slot's manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Its partition could not be read.
    #[error("{0}")]
    Read(StorageError),
    /// The envelope, signature, decoding, validation or product check.
    #[error("{0}")]
    Open(OpenError),
    /// The device has no usable trust data (`trust.invalid` said why).
    #[error("this device has no valid trust data in its initramfs (/etc/cairn/trusted-keys, /etc/cairn/product): it refuses every manifest")]
    NoTrust,
    /// Its version is below the state's rollback floor.
    #[error("version {version} is below the rollback floor {floor}")]
    BelowFloor {
        /// The manifest's version.
        version: u64,
        /// The floor.
        floor: u64,
    },
}

/// Every slot tried, and why each was refused, in the order tried.
#[derive(Debug)]
pub struct Refusals(pub Vec<(Slot, Refusal)>);

impl core::fmt::Display for Refusals {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (k, (slot, why)) in self.0.iter().enumerate() {
            if k > 0 {
                f.write_str("; ")?;
            }
            write!(f, "slot {slot}: {why}")?;
        }
        Ok(())
    }
}

/// The slots to try, in order: this boot's plan first (a slot on trial, or
/// the committed one), then the committed slot, then the other slot if it
/// is good (an older version that proved itself); in the factory fallback
/// (no valid state record), slot A only. A slot being installed, a bad
/// one, or one merely ready never boots.
pub fn slots_to_try(state: &BootState, planned: Slot, fallback: bool) -> Vec<Slot> {
    if fallback {
        return vec![Slot::A];
    }
    let mut slots = vec![planned];
    for s in [state.committed, state.committed.other()] {
        let good = s == state.committed || state.status_of(s) == SlotStatus::Good;
        if good && !slots.contains(&s) {
            slots.push(s);
        }
    }
    slots
}

/// The slot to boot and its manifest: the first of [`slots_to_try`] whose
/// `open` succeeds with a version at or above the rollback floor, with the
/// refusals of the slots tried before it; or every refusal. `open` reads
/// and verifies a slot; `version` is a manifest's version.
pub fn choose_slot<M>(
    state: &BootState,
    planned: Slot,
    fallback: bool,
    mut open: impl FnMut(Slot) -> Result<M, Refusal>,
    version: impl Fn(&M) -> u64,
) -> (Option<(Slot, M)>, Refusals) {
    let mut refused = Vec::new();
    for slot in slots_to_try(state, planned, fallback) {
        let checked = open(slot).and_then(|m| {
            let v = version(&m);
            if v < state.rollback_floor {
                Err(Refusal::BelowFloor { version: v, floor: state.rollback_floor })
            } else {
                Ok(m)
            }
        });
        match checked {
            Ok(m) => return (Some((slot, m)), Refusals(refused)),
            Err(why) => refused.push((slot, why)),
        }
    }
    (None, Refusals(refused))
}

/// Find the boot disk and its partitions: each refusal and each ignored
/// foreign disk is an event.
fn find_partitions(cmdline: &Cmdline, loader: &LoaderInfo) -> Result<(String, Partitions), BootError> {
    let timeout_ms = cmdline.disk_timeout_ms;
    let want = match (cmdline.disk, loader.esp) {
        (Some(g), _) => Want::Disk(g),
        (None, Some(esp)) => Want::Partition(esp),
        (None, None) => Want::Only,
    };
    let wanted = match &want {
        Want::Disk(g) => partitions::guid_text(g),
        Want::Partition(_) | Want::Only => "any".to_owned(),
    };
    let (found, scans) = partitions::wait_for(Duration::from_millis(timeout_ms.into()), want);
    match found {
        Ok(b) => {
            for (disk, names) in &b.foreign {
                event("partitions.foreign")
                    .kv("disk", disk)
                    .kv("names", names.join(","))
                    .kv("effect", "ignored: system partitions come from the boot disk only")
                    .emit();
            }
            let mut e = event("partitions.found").kv("disk", &b.disk).kv("guid", &wanted).kv("by", want.by());
            if let Want::Partition(esp) = &want {
                e = e.kv("esp", partitions::guid_text(esp));
            }
            e.kv("count", b.partitions.len())
                .kv("names", b.partitions.keys().cloned().collect::<Vec<_>>().join(","))
                .kv("scans", scans)
                .emit();
            Ok((b.disk, b.partitions))
        }
        Err(WaitError::Choose(ChooseError::Ambiguous(disks))) => {
            let reason = match want {
                Want::Disk(_) => "several disks carry the disk GUID of cairn.disk=",
                Want::Partition(_) => "several disks hold the partition the boot loader started from",
                Want::Only => {
                    "several disks hold cairn-* partitions and neither cairn.disk= nor the boot loader names one"
                }
            };
            event("partitions.ambiguous").kv("disks", disks.join(",")).kv("guid", &wanted).kv("reason", reason).emit();
            Err(BootError::AmbiguousDisk { reason, disks })
        }
        Err(WaitError::Choose(ChooseError::Duplicate { disk, name })) => {
            event("partitions.duplicate").kv("disk", &disk).kv("name", &name).emit();
            Err(BootError::DuplicatePartition { disk, name })
        }
        Err(WaitError::Choose(ChooseError::NotFound)) => {
            Err(BootError::NoBootDisk { guid: (want != Want::Only).then_some(wanted), timeout_ms })
        }
        Err(WaitError::Missing { disk, missing }) => Err(BootError::Partitions { disk, missing, timeout_ms }),
    }
}

/// Find the partitions and the booted slot's entry, read the state and
/// manifest, mount the layers. The slot is known even when the boot fails
/// after the partitions were found (a slot on trial then reboots).
pub fn boot(cmdline: &Cmdline, loader: &LoaderInfo) -> (Option<BootSlot>, Result<Booted, BootError>) {
    let (disk, parts) = match find_partitions(cmdline, loader) {
        Ok(found) => found,
        Err(e) => return (None, Err(e)),
    };
    let slot = bootslot::inspect(bootslot::booted_slot(cmdline.slot, loader), &parts, loader);
    // The entry the loader started: the ESP's word, else the loader's.
    let entry = slot.as_ref().map(|s| s.slot).or_else(|| bootslot::slot_by_loader(loader));
    let booted = boot_from(disk, parts, entry, slot.as_ref());
    (slot, booted)
}

/// A staged trial whose boot image is still under its pending name (the
/// power went between the stage write and the rename): name it now, so
/// the loader starts it on the restart, instead of failing the trial as a
/// loader that fell back. `Some` when the device must restart.
fn finish_staged_entry(record: &Record, entry: Option<&BootSlot>) -> Option<BootError> {
    let b = entry?;
    let e = update::entry_to_finish(&record.state, Some(b.slot), |s| b.pending.contains(&s))?;
    let tries = record.state.trial.map_or(0, |t| t.tries_left);
    match bootslot::finish_pending(&b.esp, e, tries) {
        Ok(file) => {
            event("update.boot-entry").kv("entry", e).kv("file", file).kv("after", "power-cut").emit();
            Some(BootError::EntryNamed(e))
        }
        Err(why) => {
            // The trial then ends as a loader that fell back: the committed
            // system keeps running.
            event("update.boot-entry-failed").kv("entry", e).kv("error", why).emit();
            None
        }
    }
}

/// A manifest slot booting on trial: committed once healthy for the
/// manifest's commit window.
pub struct TrialBoot {
    /// The slot.
    pub slot: Slot,
    /// Its manifest's version and the floor it sets on commit.
    pub version: u64,
    /// The floor raised to on commit.
    pub floor: u64,
}

fn boot_from(
    disk: String,
    parts: Partitions,
    entry: Option<Slot>,
    boot_slot: Option<&BootSlot>,
) -> Result<Booted, BootError> {
    let trust = trust::load();
    let mut record = Record::read(&parts, FALLBACK_ROLLBACK_FLOOR);
    let fallback = record.unreadable.is_some();
    if let Some(why) = &record.unreadable {
        event("bootstate.unreadable")
            .kv("fallback", "factory")
            .kv("slot", Slot::A)
            .kv("rollback_floor", FALLBACK_ROLLBACK_FLOOR)
            .kv("error", why)
            .emit();
    }
    let st = &record.state;
    let mut e = event("bootstate.read")
        .kv("seq", st.seq)
        .kv("committed", st.committed)
        .kv("status", format!("a:{},b:{}", st.status_of(Slot::A), st.status_of(Slot::B)))
        .kv("rollback_floor", st.rollback_floor);
    if let Some(t) = st.trial {
        e = e.kv("trial", t.slot).kv("tries_left", t.tries_left);
    }
    e.emit();
    if let Some(restart) = finish_staged_entry(&record, boot_slot).filter(|_| !fallback) {
        return Err(restart);
    }
    let plan = if fallback {
        update::BootPlan { slot: Slot::A, kind: BootKind::Committed, write: None }
    } else {
        update::plan_boot(&record.state, entry)
    };
    let planned = apply_plan(&mut record, plan);
    let manifest = load_manifest(&parts, &mut record, planned, fallback, trust.as_ref())?;
    let trial = match planned {
        BootKind::Trial { .. } => record.state.trial.filter(|t| t.slot == manifest.1).map(|t| TrialBoot {
            slot: t.slot,
            version: manifest.0.version,
            floor: manifest.0.update.floor,
        }),
        _ => None,
    };
    let manifest = manifest.0;
    if fallback {
        // The factory slot's layers are where the factory wrote them.
        record.state.layer_slots = BootState::factory_layout(&manifest);
    }
    let mounted = storage::mount_layers(manifest.layer_check, &manifest.layers, &record.state, &parts);
    // Only persistent volumes live on the data partition: without one, its
    // mount (an ext4 journal, 25 to 40 ms of an emulated boot) waits until
    // the containers have been started (`Booted::data_deferred`).
    let data_deferred = !manifest.has_persistent_volumes();
    if !data_deferred {
        storage::mount_data(&parts);
    }
    Ok(Booted {
        manifest,
        layer_dirs: mounted.dirs,
        partitions: parts,
        disk,
        targets: mounted.targets,
        record,
        trial,
        trust,
        data_deferred,
    })
}

/// Write what the boot plan needs written (a try spent, a trial ended)
/// before anything is mounted, and say what this boot is. A try that cannot
/// be recorded is not taken: the committed slot boots instead.
fn apply_plan(record: &mut Record, plan: update::BootPlan) -> BootKind {
    let mut kind = plan.kind;
    if let Some(next) = plan.write {
        if let Err(e) = record.write(next) {
            event("bootstate.write-failed").kv("error", &e).emit();
            if let BootKind::Trial { .. } = kind {
                let slot = record.state.trial.map(|t| t.slot).unwrap_or(plan.slot);
                event("update.trial-skipped")
                    .kv("slot", slot)
                    .kv("reason", "the try could not be recorded")
                    .kv("booting", record.state.committed)
                    .emit();
                kind = BootKind::Committed;
            }
        }
    }
    match kind {
        BootKind::Committed => {}
        BootKind::Trial { tries_left } => {
            event("update.trial").kv("slot", plan.slot).kv("tries_left", tries_left).kv("seq", record.state.seq).emit()
        }
        BootKind::TrialEnded { slot, reason } => event("update.rolled-back")
            .kv("slot", slot)
            .kv("reason", reason)
            .kv("booting", record.state.committed)
            .kv("rollback_floor", record.state.rollback_floor)
            .emit(),
    }
    kind
}

/// The planned slot's manifest, or the committed slot's (or the other
/// good slot's) if it is refused; in the factory fallback slot A only.
/// Each refusal is an event naming the reason; a refused trial ends (its
/// slot is marked bad). Without trust data every slot is refused.
fn load_manifest(
    parts: &Partitions,
    record: &mut Record,
    planned: BootKind,
    fallback: bool,
    trust: Option<&Trust>,
) -> Result<(Manifest, Slot), BootError> {
    let max = envelope::HEADER_LEN + envelope::MAX_PAYLOAD + envelope::SIGNATURE_LEN;
    let open = |slot: Slot| {
        let trust = trust.ok_or(Refusal::NoTrust)?;
        let bytes = storage::read_partition(parts, slot.partition(), max).map_err(Refusal::Read)?;
        let m = envelope::open_manifest(&bytes, &trust.keys).map_err(Refusal::Open)?;
        envelope::check_compatible(&m, &trust.product).map_err(Refusal::Open)?;
        Ok(m)
    };
    let st = &record.state;
    let planned_slot = match planned {
        BootKind::Trial { .. } => st.trial.map(|t| t.slot).unwrap_or(st.committed),
        _ => st.committed,
    };
    let (chosen, refused) = choose_slot(st, planned_slot, fallback, open, |m: &Manifest| m.version);
    for (slot, why) in &refused.0 {
        event("manifest.rejected").kv("slot", slot).kv("reason", why).emit();
    }
    if let (BootKind::Trial { .. }, Some((slot, _))) = (planned, &chosen) {
        if *slot != planned_slot {
            end_refused_trial(record, planned_slot);
        }
    }
    let Some((slot, m)) = chosen else {
        if let BootKind::Trial { .. } = planned {
            end_refused_trial(record, planned_slot);
        }
        return Err(BootError::Manifest(refused));
    };
    event("manifest.verified")
        .kv("slot", slot)
        .kv("appliance", &m.appliance)
        .kv("version", m.version)
        .kv("compatible", &m.compatible)
        .kv("containers", m.containers.len())
        .kv("layers", m.layers.len())
        .emit();
    if slot != planned_slot {
        event("manifest.fallback").kv("planned", planned_slot).kv("using", slot).emit();
    }
    Ok((m, slot))
}

/// The trial's manifest was refused: its slot is bad from now on.
fn end_refused_trial(record: &mut Record, slot: Slot) {
    let next = update::fail_trial(&record.state);
    match record.write(next) {
        Ok(()) => event("update.rolled-back")
            .kv("slot", slot)
            .kv("reason", TrialFailure::Refused)
            .kv("booting", record.state.committed)
            .kv("rollback_floor", record.state.rollback_floor)
            .emit(),
        Err(e) => event("bootstate.write-failed").kv("error", &e).emit(),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(committed: Slot, floor: u64) -> BootState {
        let mut s = BootState { committed, ..cairn_format::bootstate::fallback(floor) };
        s.status = [SlotStatus::Empty; 2];
        s.set_status(committed, SlotStatus::Good);
        s
    }

    /// Choose with slot versions (`Err` for a slot that does not open),
    /// recording the slots read.
    fn choose(
        st: &BootState,
        planned: Slot,
        fallback: bool,
        a: Result<u64, OpenError>,
        b: Result<u64, OpenError>,
    ) -> (Option<(Slot, u64)>, Refusals, Vec<Slot>) {
        let mut read = Vec::new();
        let open = |slot: Slot| {
            read.push(slot);
            match slot {
                Slot::A => a.clone(),
                Slot::B => b.clone(),
            }
            .map_err(Refusal::Open)
        };
        let (chosen, refused) = choose_slot(st, planned, fallback, open, |v| *v);
        (chosen, refused, read)
    }

    #[test]
    fn both_slots_valid_boots_the_committed_one_and_reads_nothing_else() {
        let (chosen, refused, read) = choose(&state(Slot::B, 1), Slot::B, false, Ok(7), Ok(8));
        assert_eq!(chosen, Some((Slot::B, 8)));
        assert!(refused.0.is_empty());
        assert_eq!(read, [Slot::B]);
        let (chosen, _, read) = choose(&state(Slot::A, 1), Slot::A, false, Ok(7), Ok(8));
        assert_eq!(chosen, Some((Slot::A, 7)));
        assert_eq!(read, [Slot::A]);
    }

    #[test]
    fn a_refused_committed_slot_falls_back_only_to_a_good_other_slot() {
        let mut st = state(Slot::A, 1);
        let (chosen, _, read) = choose(&st, Slot::A, false, Err(OpenError::Decode), Ok(3));
        assert_eq!((chosen, read), (None, vec![Slot::A]), "an empty, ready or bad slot B never boots");
        st.set_status(Slot::B, SlotStatus::Good);
        let (chosen, refused, read) = choose(&st, Slot::A, false, Err(OpenError::Decode), Ok(3));
        assert_eq!(chosen, Some((Slot::B, 3)));
        assert_eq!(read, [Slot::A, Slot::B]);
        assert!(matches!(refused.0.as_slice(), [(Slot::A, Refusal::Open(OpenError::Decode))]), "{refused:?}");
    }

    #[test]
    fn a_refused_trial_falls_back_to_the_committed_slot() {
        let st = state(Slot::A, 1);
        let (chosen, refused, read) = choose(&st, Slot::B, false, Ok(1), Err(OpenError::Decode));
        assert_eq!(chosen, Some((Slot::A, 1)));
        assert_eq!(read, [Slot::B, Slot::A]);
        assert_eq!(refused.0.len(), 1);
    }

    #[test]
    fn a_version_below_the_rollback_floor_is_refused_and_the_floor_itself_is_not() {
        let mut st = state(Slot::A, 5);
        st.set_status(Slot::B, SlotStatus::Good);
        let (chosen, refused, _) = choose(&st, Slot::A, false, Ok(4), Ok(5));
        assert_eq!(chosen, Some((Slot::B, 5)));
        assert!(
            matches!(refused.0.as_slice(), [(Slot::A, Refusal::BelowFloor { version: 4, floor: 5 })]),
            "{refused:?}"
        );
        assert_eq!(refused.to_string(), "slot a: version 4 is below the rollback floor 5");
    }

    #[test]
    fn neither_slot_acceptable_names_both_reasons() {
        let mut st = state(Slot::B, 9);
        st.set_status(Slot::A, SlotStatus::Good);
        let (chosen, refused, _) = choose(&st, Slot::B, false, Ok(2), Err(OpenError::TrailingBytes(3)));
        assert_eq!(chosen, None);
        assert_eq!(
            BootError::Manifest(refused).to_string(),
            "no acceptable manifest: slot b: signed payload holds 3 bytes after the manifest; \
             slot a: version 2 is below the rollback floor 9"
        );
    }

    #[test]
    fn boot_errors_say_what_is_missing() {
        let e = BootError::NoBootDisk { guid: None, timeout_ms: 10 };
        assert_eq!(e.to_string(), "partitions missing after 10 ms: the boot disk (no disk holds cairn-* partitions)");
        let e = BootError::NoBootDisk { guid: Some("ABC".into()), timeout_ms: 10 };
        assert_eq!(e.to_string(), "partitions missing after 10 ms: the boot disk (no disk with GPT disk GUID ABC)");
        let e = BootError::Partitions { disk: "vda".into(), missing: vec!["cairn-state", "cairn-data"], timeout_ms: 5 };
        assert_eq!(e.to_string(), "partitions missing after 5 ms: cairn-state,cairn-data on vda");
        let e = BootError::AmbiguousDisk { reason: "two", disks: vec!["vda".into(), "vdb".into()] };
        assert_eq!(e.to_string(), "two: vda,vdb");
    }

    #[test]
    fn the_factory_fallback_tries_slot_a_only() {
        let st = cairn_format::bootstate::fallback(1);
        let (chosen, refused, read) = choose(&st, Slot::A, true, Err(OpenError::Decode), Ok(4));
        assert_eq!(chosen, None, "slot B is not the factory slot");
        assert_eq!(read, [Slot::A]);
        assert_eq!(refused.0.len(), 1);
        let (chosen, _, _) = choose(&st, Slot::A, true, Ok(1), Ok(4));
        assert_eq!(chosen, Some((Slot::A, 1)));
    }
}
