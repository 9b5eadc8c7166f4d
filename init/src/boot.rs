//! The boot sequence after the early mounts: partitions, boot state, the
//! signed manifest, and the verified layers (behind dm-verity by default).

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_format::bootstate::{self, BootState, BootStateError, Slot};
use cairn_format::envelope::{self, OpenError};
use cairn_format::manifest::Manifest;

use crate::bootslot::{self, BootSlot, LoaderInfo};
use crate::cmdline::Cmdline;
use crate::event::event;
use crate::partitions::{self, ChooseError, Partitions, WaitError, Want};
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

/// Why the boot state record was not used (the factory state was).
#[derive(Debug, thiserror::Error)]
enum StateUnreadable {
    /// The state partition could not be read.
    #[error("{0}")]
    Read(StorageError),
    /// Neither copy of the record is valid.
    #[error("{0}")]
    Record(BootStateError),
}

/// The slots to try, in order: the active one, then the other; in the
/// factory fallback (no valid state record), slot A only.
pub fn slots_to_try(state: &BootState, fallback: bool) -> Vec<Slot> {
    if fallback {
        vec![Slot::A]
    } else {
        vec![state.active, state.active.other()]
    }
}

/// The slot to boot and its manifest: the first of [`slots_to_try`] whose
/// `open` succeeds with a version at or above the rollback floor, with the
/// refusals of the slots tried before it; or every refusal. `open` reads
/// and verifies a slot; `version` is a manifest's version.
pub fn choose_slot<M>(
    state: &BootState,
    fallback: bool,
    mut open: impl FnMut(Slot) -> Result<M, Refusal>,
    version: impl Fn(&M) -> u64,
) -> (Option<(Slot, M)>, Refusals) {
    let mut refused = Vec::new();
    for slot in slots_to_try(state, fallback) {
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
    match partitions::wait_for(Duration::from_millis(timeout_ms.into()), want) {
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
    let slot = bootslot::inspect(cmdline.slot, &parts, loader);
    (slot, boot_from(disk, parts))
}

fn boot_from(disk: String, parts: Partitions) -> Result<Booted, BootError> {
    let trust = trust::load();
    let region = storage::read_partition(&parts, "cairn-state", bootstate::RECORD_SIZE);
    let (mut state, unreadable) = match region {
        Ok(r) => {
            let (s, why) = bootstate::read_or_fallback(&r, FALLBACK_ROLLBACK_FLOOR);
            (s, why.map(StateUnreadable::Record))
        }
        Err(e) => (bootstate::fallback(FALLBACK_ROLLBACK_FLOOR), Some(StateUnreadable::Read(e))),
    };
    let fallback = unreadable.is_some();
    if let Some(why) = &unreadable {
        event("bootstate.unreadable")
            .kv("fallback", "factory")
            .kv("slot", Slot::A)
            .kv("rollback_floor", FALLBACK_ROLLBACK_FLOOR)
            .kv("error", why)
            .emit();
    }
    event("bootstate.read")
        .kv("seq", state.seq)
        .kv("active", state.active)
        .kv("trial", state.trial)
        .kv("attempts_left", state.attempts_left)
        .kv("rollback_floor", state.rollback_floor)
        .emit();
    let manifest = load_manifest(&parts, &state, fallback, trust.as_ref())?;
    if fallback {
        // The factory slot's layers are where the factory wrote them.
        state.layer_slots = BootState::factory_layout(&manifest);
    }
    let mounted = storage::mount_layers(manifest.layer_check, &manifest.layers, &state, &parts);
    storage::mount_data(&parts);
    Ok(Booted { manifest, layer_dirs: mounted.dirs, partitions: parts, disk, targets: mounted.targets })
}

/// The active slot's manifest, or the other slot's if the active one is
/// refused (in the factory fallback, slot A only). Each refusal is an event
/// naming the reason. Without trust data (`None`) every slot is refused.
fn load_manifest(
    parts: &Partitions,
    state: &BootState,
    fallback: bool,
    trust: Option<&Trust>,
) -> Result<Manifest, BootError> {
    let max = envelope::HEADER_LEN + envelope::MAX_PAYLOAD + envelope::SIGNATURE_LEN;
    let open = |slot: Slot| {
        let trust = trust.ok_or(Refusal::NoTrust)?;
        let bytes = storage::read_partition(parts, slot.partition(), max).map_err(Refusal::Read)?;
        let m = envelope::open_manifest(&bytes, &trust.keys).map_err(Refusal::Open)?;
        envelope::check_compatible(&m, &trust.product).map_err(Refusal::Open)?;
        Ok(m)
    };
    let (chosen, refused) = choose_slot(state, fallback, open, |m: &Manifest| m.version);
    for (slot, why) in &refused.0 {
        event("manifest.rejected").kv("slot", slot).kv("reason", why).emit();
    }
    let Some((slot, m)) = chosen else {
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
    if slot != state.active {
        event("manifest.fallback").kv("active", state.active).kv("using", slot).emit();
    }
    Ok(m)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(active: Slot, floor: u64) -> BootState {
        BootState { active, ..bootstate::fallback(floor) }
    }

    /// Choose with slot versions (`Err` for a slot that does not open),
    /// recording the slots read.
    fn choose(
        st: &BootState,
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
        let (chosen, refused) = choose_slot(st, fallback, open, |v| *v);
        (chosen, refused, read)
    }

    #[test]
    fn both_slots_valid_boots_the_active_one_and_reads_nothing_else() {
        let (chosen, refused, read) = choose(&state(Slot::B, 1), false, Ok(7), Ok(8));
        assert_eq!(chosen, Some((Slot::B, 8)));
        assert!(refused.0.is_empty());
        assert_eq!(read, [Slot::B]);
        let (chosen, _, read) = choose(&state(Slot::A, 1), false, Ok(7), Ok(8));
        assert_eq!(chosen, Some((Slot::A, 7)));
        assert_eq!(read, [Slot::A]);
    }

    #[test]
    fn a_refused_active_slot_falls_back_to_the_other() {
        let (chosen, refused, read) = choose(&state(Slot::A, 1), false, Err(OpenError::Decode), Ok(3));
        assert_eq!(chosen, Some((Slot::B, 3)));
        assert_eq!(read, [Slot::A, Slot::B]);
        assert!(matches!(refused.0.as_slice(), [(Slot::A, Refusal::Open(OpenError::Decode))]), "{refused:?}");
    }

    #[test]
    fn a_version_below_the_rollback_floor_is_refused_and_the_floor_itself_is_not() {
        let (chosen, refused, _) = choose(&state(Slot::A, 5), false, Ok(4), Ok(5));
        assert_eq!(chosen, Some((Slot::B, 5)));
        assert!(
            matches!(refused.0.as_slice(), [(Slot::A, Refusal::BelowFloor { version: 4, floor: 5 })]),
            "{refused:?}"
        );
        assert_eq!(refused.to_string(), "slot a: version 4 is below the rollback floor 5");
    }

    #[test]
    fn neither_slot_acceptable_names_both_reasons() {
        let (chosen, refused, _) = choose(&state(Slot::B, 9), false, Ok(2), Err(OpenError::TrailingBytes(3)));
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
        let st = bootstate::fallback(1);
        let (chosen, refused, read) = choose(&st, true, Err(OpenError::Decode), Ok(4));
        assert_eq!(chosen, None, "slot B is not the factory slot");
        assert_eq!(read, [Slot::A]);
        assert_eq!(refused.0.len(), 1);
        let (chosen, _, _) = choose(&st, true, Ok(1), Ok(4));
        assert_eq!(chosen, Some((Slot::A, 1)));
    }
}
