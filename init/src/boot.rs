//! The boot sequence after the early mounts: partitions, boot state, the
//! signed manifest, and the verified layers.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_images::bootstate::BootState;
use cairn_images::envelope;
use cairn_images::manifest::Manifest;

use crate::event::event;
use crate::keys::TRUSTED_KEYS;
use crate::partitions::{self, Partitions};
use crate::storage::{self, StorageError};

/// A booted system: what the supervisor needs.
pub struct Booted {
    /// The verified manifest.
    pub manifest: Manifest,
    /// Layer name → mount directory, for the layers that verified.
    pub layer_dirs: BTreeMap<String, String>,
    /// Partitions of the boot disk by GPT name.
    pub partitions: Partitions,
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
    /// Reading a partition or the boot state.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// Neither manifest slot holds an acceptable manifest.
    #[error("no acceptable manifest: {0}")]
    Manifest(String),
}

/// Find the partitions, read the state and manifest, mount the layers.
pub fn boot(disk_timeout_ms: u32) -> Result<Booted, BootError> {
    let (parts, missing) = partitions::wait_for(Duration::from_millis(disk_timeout_ms.into()));
    if !missing.is_empty() {
        return Err(BootError::Partitions { missing: missing.join(","), timeout_ms: disk_timeout_ms });
    }
    event("partitions.found")
        .kv("count", parts.len())
        .kv("names", parts.keys().cloned().collect::<Vec<_>>().join(","))
        .emit();
    let state = storage::read_boot_state(&parts)?;
    event("bootstate.read")
        .kv("seq", state.seq)
        .kv("active", state.active)
        .kv("trial", state.trial)
        .kv("attempts_left", state.attempts_left)
        .kv("rollback_floor", state.rollback_floor)
        .emit();
    let manifest = load_manifest(&parts, &state)?;
    let layer_dirs = storage::mount_layers(&manifest.layers, &state, &parts);
    storage::mount_data(&parts);
    Ok(Booted { manifest, layer_dirs, partitions: parts })
}

/// The active slot's manifest, or the other slot's if the active one is
/// refused. Each refusal is an event naming the reason.
fn load_manifest(parts: &Partitions, state: &BootState) -> Result<Manifest, BootError> {
    if TRUSTED_KEYS.is_empty() {
        event("manifest.no-trusted-keys").kv("reason", "this cairn-init was built without trusted keys").emit();
    }
    let mut reasons = Vec::new();
    for slot in [state.active, state.active.other()] {
        let max = envelope::HEADER_LEN + envelope::MAX_PAYLOAD + envelope::SIGNATURE_LEN;
        let result = storage::read_partition(parts, slot.partition(), max)
            .map_err(|e| e.to_string())
            .and_then(|bytes| envelope::open_manifest(&bytes, TRUSTED_KEYS).map_err(|e| e.to_string()))
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
