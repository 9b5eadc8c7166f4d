//! Reading partitions: the boot state region, a manifest slot, and layers
//! (verified by sha256 before they are mounted read-only).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;

use cairn_format::bootstate::BootState;
use cairn_format::digest::{Digest, Hasher};
use cairn_format::manifest::Layer;
use cairn_runtime::sys;

use crate::event::event;
use crate::partitions::{self, Partitions};

/// Where verified layers are mounted, by digest.
pub const LAYERS_DIR: &str = "/run/cairn/layers";

/// Where the data partition (`cairn-data`, ext4) is mounted.
pub const DATA_DIR: &str = "/run/cairn/data";

/// Why a partition could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No partition with that GPT name.
    #[error("partition {0} not found")]
    Missing(String),
    /// Reading it failed.
    #[error("reading {path}: {error}")]
    Read {
        /// Device node.
        path: String,
        /// Cause.
        error: std::io::Error,
    },
}

/// Read the first `len` bytes of a named partition.
pub fn read_partition(parts: &Partitions, name: &str, len: usize) -> Result<Vec<u8>, StorageError> {
    let path = parts.get(name).ok_or_else(|| StorageError::Missing(name.into()))?;
    let mut buf = Vec::with_capacity(len);
    File::open(path)
        .and_then(|f| f.take(len as u64).read_to_end(&mut buf))
        .map_err(|error| StorageError::Read { path: path.clone(), error })?;
    Ok(buf)
}

/// Hash the first `size` bytes of a device.
fn digest_of(path: &str, size: u64) -> std::io::Result<Digest> {
    let mut f = File::open(path)?.take(size);
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(buf.get(..n).unwrap_or(&[]));
    }
    if total != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("partition holds {total} of {size} bytes"),
        ));
    }
    Ok(h.finish())
}

/// Verify and mount every layer. Returns layer name → mount directory for
/// the layers that passed; each failure is an event naming the digest.
pub fn mount_layers(layers: &[Layer], state: &BootState, parts: &Partitions) -> BTreeMap<String, String> {
    let mut ready = BTreeMap::new();
    for layer in layers {
        let d = layer.digest;
        let Some(number) = state.partition_of(&d) else {
            event("layer.missing")
                .kv("name", &layer.name)
                .kv("digest", d)
                .kv("reason", "no partition recorded for this digest")
                .emit();
            continue;
        };
        let part = partitions::layer_partition_name(number);
        let Some(dev) = partitions::layer_partition(parts, number) else {
            event("layer.missing").kv("name", &layer.name).kv("digest", d).kv("partition", &part).emit();
            continue;
        };
        match digest_of(dev, layer.size) {
            Ok(found) if found == d => {}
            Ok(found) => {
                event("layer.corrupt")
                    .kv("name", &layer.name)
                    .kv("digest", d)
                    .kv("found", found)
                    .kv("partition", &part)
                    .emit();
                continue;
            }
            Err(e) => {
                event("layer.unreadable")
                    .kv("name", &layer.name)
                    .kv("digest", d)
                    .kv("partition", &part)
                    .kv("error", e)
                    .emit();
                continue;
            }
        }
        let dir = format!("{LAYERS_DIR}/{d}");
        let mounted = sys::mkdir_all(&dir, 0o755).and_then(|()| {
            sys::mount(
                "layer",
                Some(dev),
                &dir,
                Some("squashfs"),
                libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
                None,
            )
        });
        match mounted {
            Ok(()) => {
                event("layer.mounted")
                    .kv("name", &layer.name)
                    .kv("digest", d)
                    .kv("partition", &part)
                    .kv("size", layer.size)
                    .emit();
                ready.insert(layer.name.as_str().to_owned(), dir);
            }
            Err(e) => event("layer.mount-failed").kv("name", &layer.name).kv("digest", d).kv("error", e).emit(),
        }
    }
    ready
}

/// Mount the data partition read-write at [`DATA_DIR`]. Its absence or a
/// failed mount is an event, not a boot failure: containers run from their
/// layers, and only volumes (when configured) need it.
pub fn mount_data(parts: &Partitions) {
    let Some(dev) = parts.get("cairn-data") else {
        event("data.unavailable").kv("reason", "no cairn-data partition").emit();
        return;
    };
    let flags = libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOATIME;
    let mounted = sys::mkdir_all(DATA_DIR, 0o755)
        .and_then(|()| sys::mount("cairn-data", Some(dev), DATA_DIR, Some("ext4"), flags, None));
    match mounted {
        Ok(()) => event("data.mounted").kv("device", dev).kv("path", DATA_DIR).kv("fs", "ext4").emit(),
        Err(e) => event("data.unavailable").kv("device", dev).kv("error", e).emit(),
    }
}
