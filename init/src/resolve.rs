//! Device sources of the manifest (`security.devices[].source`) resolved to
//! host device nodes, in one place.
//!
//! Rules (the manifest validation, shared with the host tool, already
//! refuses `partition:cairn-*` and paths outside `/dev/`; they are checked
//! again here so PID 1 does not depend on it):
//! - `partition:NAME` is a partition of the boot disk, by GPT name, and
//!   never a system (`cairn-*`) partition;
//! - anything else is a path under `/dev/`;
//! - whatever the name, a block device that is the boot disk itself or one
//!   of its system partitions (same device number, `st_rdev`) is refused: a
//!   `/dev/vda` or a `/dev/disk/by-*` alias cannot hand a container the
//!   state, the manifest slots, the layers or the mounted data partition.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use cairn_images::manifest::check_device_source;

use crate::partitions::{Partitions, SYSTEM_PREFIX};

/// Device numbers a container may never be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forbidden {
    rdevs: Vec<u64>,
}

impl Forbidden {
    /// The boot disk `/dev/<disk>` and its system partitions, by device
    /// number (nodes that cannot be read are skipped: nothing to compare).
    pub fn of_boot_disk(disk: &str, parts: &Partitions) -> Self {
        let nodes = std::iter::once(format!("/dev/{disk}"))
            .chain(parts.iter().filter(|(n, _)| n.starts_with(SYSTEM_PREFIX)).map(|(_, d)| d.clone()));
        Self { rdevs: nodes.filter_map(|n| block_rdev(&n)).collect() }
    }

    /// Whether a block device number is forbidden.
    pub fn contains(&self, rdev: u64) -> bool {
        self.rdevs.contains(&rdev)
    }
}

/// The device number of a block device node (following symlinks).
fn block_rdev(path: &str) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?;
    m.file_type().is_block_device().then(|| m.rdev())
}

/// The name rules: the host node a source names, before looking at it.
pub fn source_path(source: &str, parts: &Partitions) -> Result<String, String> {
    check_device_source(source).map_err(str::to_owned)?;
    match source.strip_prefix("partition:") {
        Some(name) if name.starts_with(SYSTEM_PREFIX) => Err("names a system (cairn-*) partition".into()),
        Some(name) => parts.get(name).cloned().ok_or_else(|| format!("no partition {name} on the boot disk")),
        None => Ok(source.to_owned()),
    }
}

/// Resolve a device source to a host node, refusing system devices.
pub fn device_source(source: &str, parts: &Partitions, forbidden: &Forbidden) -> Result<String, String> {
    let path = source_path(source, parts)?;
    match block_rdev(&path) {
        Some(rdev) if forbidden.contains(rdev) => {
            Err(format!("{path} is the boot disk or one of its system partitions"))
        }
        _ => Ok(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Partitions {
        [("cairn-state", "/dev/vda1"), ("cairn-data", "/dev/vda7"), ("camera-store", "/dev/vda8")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    #[test]
    fn sources_resolve_by_the_name_rules() {
        let p = parts();
        assert_eq!(source_path("partition:camera-store", &p), Ok("/dev/vda8".into()));
        assert_eq!(source_path("/dev/ttyS1", &p), Ok("/dev/ttyS1".into()));
        assert!(source_path("partition:cairn-data", &p).is_err_and(|e| e.contains("system (cairn-*)")));
        assert!(source_path("partition:cairn-state", &p).is_err());
        assert!(source_path("partition:ghost", &p).is_err_and(|e| e.contains("no partition ghost")));
        assert!(source_path("/etc/shadow", &p).is_err());
        assert!(source_path("/dev/../etc/shadow", &p).is_err());
    }

    #[test]
    fn a_forbidden_device_number_is_refused_whatever_its_name() {
        // Host test: /dev/null is a char device, never "the boot disk".
        let p = parts();
        let none = Forbidden::default();
        assert_eq!(device_source("/dev/null", &p, &none), Ok("/dev/null".into()));
        let f = Forbidden { rdevs: vec![42] };
        assert!(f.contains(42) && !f.contains(43));
    }
}
