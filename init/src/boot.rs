//! The boot sequence after the early mounts: partitions, boot state, the
//! signed manifest, and the verified layers.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_format::bootstate::{self, BootState, Slot};
use cairn_format::envelope;
use cairn_format::manifest::Manifest;

use crate::cmdline::Cmdline;
use crate::event::event;
use crate::keys::{COMPATIBLE, FALLBACK_ROLLBACK_FLOOR, TRUSTED_KEYS};
use crate::partitions::{self, ChooseError, Partitions, WaitError};
use crate::storage::{self, StorageError};

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
}

/// Why the device has nothing to run.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Required partitions did not appear in time.
    #[error("partitions missing after {timeout_ms} ms: {missing}")]
    Partitions {
        /// Names missing.
        missing: String,
        /// The wait.
        timeout_ms: u32,
    },
    /// No single boot disk: two candidates, or a system name twice.
    #[error("{0}")]
    Disk(String),
    /// Reading a partition or the boot state.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// Neither manifest slot holds an acceptable manifest.
    #[error("no acceptable manifest: {0}")]
    Manifest(String),
}

/// Find the boot disk and its partitions: each refusal and each ignored
/// foreign disk is an event.
fn find_partitions(cmdline: &Cmdline) -> Result<(String, Partitions), BootError> {
    let timeout_ms = cmdline.disk_timeout_ms;
    let want = cmdline.disk.as_ref();
    let wanted = want.map_or_else(|| "any".to_owned(), partitions::guid_text);
    match partitions::wait_for(Duration::from_millis(timeout_ms.into()), want) {
        Ok(b) => {
            for (disk, names) in &b.foreign {
                event("partitions.foreign")
                    .kv("disk", disk)
                    .kv("names", names.join(","))
                    .kv("effect", "ignored: system partitions come from the boot disk only")
                    .emit();
            }
            event("partitions.found")
                .kv("disk", &b.disk)
                .kv("guid", &wanted)
                .kv("count", b.partitions.len())
                .kv("names", b.partitions.keys().cloned().collect::<Vec<_>>().join(","))
                .emit();
            Ok((b.disk, b.partitions))
        }
        Err(WaitError::Choose(ChooseError::Ambiguous(disks))) => {
            let reason = match want {
                Some(_) => "several disks carry the disk GUID of cairn.disk=",
                None => "several disks hold cairn-* partitions and cairn.disk= does not name one",
            };
            event("partitions.ambiguous").kv("disks", disks.join(",")).kv("guid", &wanted).kv("reason", reason).emit();
            Err(BootError::Disk(format!("{reason}: {}", disks.join(","))))
        }
        Err(WaitError::Choose(ChooseError::Duplicate { disk, name })) => {
            event("partitions.duplicate").kv("disk", &disk).kv("name", &name).emit();
            Err(BootError::Disk(format!("partition name {name} appears twice on boot disk {disk}")))
        }
        Err(WaitError::Choose(ChooseError::NotFound)) => Err(BootError::Partitions {
            missing: match want {
                Some(_) => format!("the boot disk (no disk with GPT disk GUID {wanted})"),
                None => "the boot disk (no disk holds cairn-* partitions)".into(),
            },
            timeout_ms,
        }),
        Err(WaitError::Missing { disk, missing }) => {
            Err(BootError::Partitions { missing: format!("{} on {disk}", missing.join(",")), timeout_ms })
        }
    }
}

/// Find the partitions, read the state and manifest, mount the layers.
pub fn boot(cmdline: &Cmdline) -> Result<Booted, BootError> {
    let (disk, parts) = find_partitions(cmdline)?;
    let region = storage::read_partition(&parts, "cairn-state", bootstate::RECORD_SIZE);
    let (mut state, unreadable) = match &region {
        Ok(r) => {
            let (s, why) = bootstate::read_or_fallback(r, FALLBACK_ROLLBACK_FLOOR);
            (s, why.map(|e| e.to_string()))
        }
        Err(e) => (bootstate::fallback(FALLBACK_ROLLBACK_FLOOR), Some(e.to_string())),
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
    let manifest = load_manifest(&parts, &state, fallback)?;
    if fallback {
        // The factory slot's layers are where the factory wrote them.
        state.layer_slots = BootState::factory_layout(&manifest);
    }
    let layer_dirs = storage::mount_layers(&manifest.layers, &state, &parts);
    storage::mount_data(&parts);
    Ok(Booted { manifest, layer_dirs, partitions: parts, disk })
}

/// The active slot's manifest, or the other slot's if the active one is
/// refused (in the factory fallback, slot A only). Each refusal is an event
/// naming the reason.
fn load_manifest(parts: &Partitions, state: &BootState, fallback: bool) -> Result<Manifest, BootError> {
    if TRUSTED_KEYS.is_empty() {
        event("manifest.no-trusted-keys").kv("reason", "this cairn-init was built without trusted keys").emit();
    }
    if COMPATIBLE.is_empty() {
        event("manifest.no-compatible")
            .kv("reason", "this cairn-init was built without CAIRN_COMPATIBLE and refuses every manifest")
            .emit();
    }
    let mut reasons = Vec::new();
    let slots: &[Slot] = if fallback { &[Slot::A] } else { &[state.active, state.active.other()] };
    for &slot in slots {
        let max = envelope::HEADER_LEN + envelope::MAX_PAYLOAD + envelope::SIGNATURE_LEN;
        let result = storage::read_partition(parts, slot.partition(), max)
            .map_err(|e| e.to_string())
            .and_then(|bytes| envelope::open_manifest(&bytes, TRUSTED_KEYS).map_err(|e| e.to_string()))
            .and_then(|m| envelope::check_compatible(&m, COMPATIBLE).map(|()| m).map_err(|e| e.to_string()))
            .and_then(|m| {
                if m.version < state.rollback_floor {
                    Err(format!("version {} is below the rollback floor {}", m.version, state.rollback_floor))
                } else {
                    Ok(m)
                }
            });
        match result {
            Ok(m) => {
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
                return Ok(m);
            }
            Err(why) => {
                event("manifest.rejected").kv("slot", slot).kv("reason", &why).emit();
                reasons.push(format!("slot {slot}: {why}"));
            }
        }
    }
    Err(BootError::Manifest(reasons.join("; ")))
}
