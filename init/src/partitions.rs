//! Find partitions by their GPT name. The kernel parses the partition table
//! and publishes each partition's name as `PARTNAME=` in its uevent file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Partitions by GPT name → device node path.
pub type Partitions = BTreeMap<String, String>;

/// Partitions the device cannot boot without.
pub const REQUIRED: [&str; 3] = ["cairn-state", "cairn-manifest-a", "cairn-manifest-b"];

/// Parse one uevent file: (DEVNAME, PARTNAME) when both are present.
pub fn parse_uevent(text: &str) -> Option<(String, String)> {
    let mut dev = None;
    let mut part = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("DEVNAME=") {
            dev = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("PARTNAME=") {
            part = Some(v.to_owned());
        }
    }
    Some((dev?, part?))
}

/// Scan /sys/class/block once.
pub fn scan() -> Partitions {
    let mut found = Partitions::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/block") else {
        return found;
    };
    for entry in dir.flatten() {
        let uevent = entry.path().join("uevent");
        if let Some((dev, name)) = std::fs::read_to_string(uevent).ok().as_deref().and_then(parse_uevent) {
            // First one wins: a second disk with the same names is ignored.
            found.entry(name).or_insert(format!("/dev/{dev}"));
        }
    }
    found
}

/// Scan until every required partition is present or the timeout passes.
/// Returns what was found and the names still missing.
pub fn wait_for(timeout: Duration) -> (Partitions, Vec<&'static str>) {
    let start = Instant::now();
    loop {
        let found = scan();
        let missing: Vec<_> = REQUIRED.into_iter().filter(|r| !found.contains_key(*r)).collect();
        if missing.is_empty() || start.elapsed() >= timeout {
            return (found, missing);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Layer partitions (`cairn-layer-NN`) by number.
pub fn layer_partition(parts: &Partitions, number: u8) -> Option<&String> {
    parts.get(&layer_partition_name(number))
}

/// The name of layer partition `number`.
pub fn layer_partition_name(number: u8) -> String {
    format!("cairn-layer-{number:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uevent_lines_give_device_and_name() {
        let t = "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=1\nPARTNAME=cairn-state\n";
        assert_eq!(parse_uevent(t), Some(("vda1".into(), "cairn-state".into())));
        assert_eq!(parse_uevent("DEVNAME=vda\nDEVTYPE=disk\n"), None);
        assert_eq!(layer_partition_name(3), "cairn-layer-03");
    }
}
