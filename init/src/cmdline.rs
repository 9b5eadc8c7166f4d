//! The `cairn.*` keys of the kernel command line.

/// Settings read from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// How long to wait for the boot disk's partitions.
    pub disk_timeout_ms: u32,
    /// How long a container may take to set up (clone to exec).
    pub start_timeout_ms: u32,
    /// `cairn.disk=GUID`: the GPT disk GUID of the boot disk (on-disk order).
    pub disk: Option<crate::partitions::Guid>,
    /// `cairn.slot=a|b`: the boot slot whose image holds this command line
    /// (written by `cairn image assemble` into each slot's signed image).
    pub slot: Option<cairn_format::bootstate::Slot>,
    /// `cairn.bless_after_ms=N`: how long the containers must run without a
    /// failure before a trial commits (default: the manifest's
    /// `update.commit_after_ms`).
    pub bless_after_ms: Option<u32>,
    /// Unknown or malformed `cairn.*` words, reported as warnings.
    pub ignored: Vec<String>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Self {
            disk_timeout_ms: 10_000,
            start_timeout_ms: 10_000,
            disk: None,
            slot: None,
            bless_after_ms: None,
            ignored: Vec::new(),
        }
    }
}

/// Parse the command line. Words not starting with `cairn.` are the kernel's.
pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for word in text.split_whitespace().filter(|w| w.starts_with("cairn.")) {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        match (key, value.parse::<u32>(), crate::partitions::parse_guid(value)) {
            ("cairn.disk_timeout_ms", Ok(v), _) if v > 0 => c.disk_timeout_ms = v,
            ("cairn.start_timeout_ms", Ok(v), _) if v > 0 => c.start_timeout_ms = v,
            ("cairn.bless_after_ms", Ok(v), _) => c.bless_after_ms = Some(v),
            ("cairn.disk", _, Some(g)) => c.disk = Some(g),
            ("cairn.slot", _, _) if value == "a" => c.slot = Some(cairn_format::bootstate::Slot::A),
            ("cairn.slot", _, _) if value == "b" => c.slot = Some(cairn_format::bootstate::Slot::B),
            _ => c.ignored.push(word.to_owned()),
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_parse_and_unknown_ones_are_kept_for_a_warning() {
        let c = parse(
            "console=ttyS0 cairn.disk_timeout_ms=2500 cairn.bogus=1 cairn.disk_timeout_ms=x quiet cairn.start_timeout_ms=900 cairn.start_timeout_ms=0",
        );
        assert_eq!(c.disk_timeout_ms, 2500);
        assert_eq!(c.start_timeout_ms, 900);
        assert_eq!(c.ignored, ["cairn.bogus=1", "cairn.disk_timeout_ms=x", "cairn.start_timeout_ms=0"]);
        assert_eq!(parse(""), Cmdline::default());
        let c = parse("cairn.disk=0FC63DAF-8483-4772-8E79-3D69D8477DE4 cairn.disk=nope");
        assert_eq!(
            c.disk.map(|g| crate::partitions::guid_text(&g)).as_deref(),
            Some("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
        );
        assert_eq!(c.ignored, ["cairn.disk=nope"]);
        let c = parse("cairn.slot=b cairn.bless_after_ms=0 cairn.slot=c");
        assert_eq!((c.slot, c.bless_after_ms), (Some(cairn_format::bootstate::Slot::B), Some(0)));
        assert_eq!(c.ignored, ["cairn.slot=c"]);
    }
}
