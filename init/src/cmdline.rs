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
    /// `cairn.watchdog=off|SECONDS`: the watchdog's timeout (the board's
    /// command line names it; a later word overrides it).
    pub watchdog: Watchdog,
    /// `cairn.watchdog_device=/dev/...`: its device node.
    pub watchdog_device: String,
    /// `cairn.test.hang=supervisor` (test builds only, feature
    /// `test-hooks`): PID 1 stops petting the watchdog and blocks forever
    /// in its event loop; `cairn.test.hang=trial`: the same, only on a boot
    /// whose manifest slot is on trial; `cairn.test.hang=entry-name`: the
    /// installer child (not PID 1) stops after the stage write, before it
    /// names the new boot entry (a power cut lands there).
    #[cfg(feature = "test-hooks")]
    pub test_hang: Option<TestHang>,
    /// Unknown or malformed `cairn.*` words, reported as warnings.
    pub ignored: Vec<String>,
}

/// When PID 1 hangs on purpose (test builds only).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestHang {
    /// Every boot, at the event loop's first turn.
    Supervisor,
    /// Only a boot whose manifest slot is on trial.
    Trial,
    /// The installer, between the stage write and naming the boot entry.
    EntryName,
}

/// What the command line says about the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watchdog {
    /// No `cairn.watchdog=` word: the board names no watchdog.
    Unnamed,
    /// `cairn.watchdog=off`.
    Off,
    /// `cairn.watchdog=SECONDS` (1..=65535, the range of the kernel's
    /// softdog; a driver may round it).
    Seconds(u32),
}

/// The default device node (`cairn_board::DEFAULT_WATCHDOG_DEVICE`).
pub const DEFAULT_WATCHDOG_DEVICE: &str = "/dev/watchdog0";

/// A device node path PID 1 may open as the watchdog: under /dev, no `..`.
fn watchdog_device(v: &str) -> bool {
    v.strip_prefix("/dev/").is_some_and(|rest| !rest.is_empty() && !rest.split('/').any(|c| c.is_empty() || c == ".."))
}

impl Default for Cmdline {
    fn default() -> Self {
        Self {
            disk_timeout_ms: 10_000,
            start_timeout_ms: 10_000,
            disk: None,
            slot: None,
            bless_after_ms: None,
            watchdog: Watchdog::Unnamed,
            watchdog_device: DEFAULT_WATCHDOG_DEVICE.to_owned(),
            #[cfg(feature = "test-hooks")]
            test_hang: None,
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
            ("cairn.watchdog", _, _) if value == "off" => c.watchdog = Watchdog::Off,
            ("cairn.watchdog", Ok(v @ 1..=65_535), _) => c.watchdog = Watchdog::Seconds(v),
            ("cairn.watchdog_device", _, _) if watchdog_device(value) => c.watchdog_device = value.to_owned(),
            #[cfg(feature = "test-hooks")]
            ("cairn.test.hang", _, _) if value == "supervisor" => c.test_hang = Some(TestHang::Supervisor),
            #[cfg(feature = "test-hooks")]
            ("cairn.test.hang", _, _) if value == "trial" => c.test_hang = Some(TestHang::Trial),
            #[cfg(feature = "test-hooks")]
            ("cairn.test.hang", _, _) if value == "entry-name" => c.test_hang = Some(TestHang::EntryName),
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

    #[test]
    fn the_watchdog_word_sets_or_turns_off_the_timeout_and_the_last_one_wins() {
        assert_eq!((parse("").watchdog, parse("").watchdog_device.as_str()), (Watchdog::Unnamed, "/dev/watchdog0"));
        assert_eq!(parse("cairn.watchdog=15").watchdog, Watchdog::Seconds(15));
        // The board's word first, an override after it.
        assert_eq!(parse("cairn.watchdog=15 cairn.watchdog=off").watchdog, Watchdog::Off);
        assert_eq!(parse("cairn.watchdog=off cairn.watchdog=40").watchdog, Watchdog::Seconds(40));
        assert_eq!(parse("cairn.watchdog=65535").watchdog, Watchdog::Seconds(65_535));
        let c = parse("cairn.watchdog=15 cairn.watchdog=0 cairn.watchdog=65536 cairn.watchdog=-1 cairn.watchdog=OFF cairn.watchdog");
        assert_eq!(c.watchdog, Watchdog::Seconds(15), "malformed words leave the earlier value");
        assert_eq!(
            c.ignored,
            ["cairn.watchdog=0", "cairn.watchdog=65536", "cairn.watchdog=-1", "cairn.watchdog=OFF", "cairn.watchdog"]
        );
    }

    #[test]
    fn the_watchdog_device_must_be_a_node_under_dev() {
        assert_eq!(parse("cairn.watchdog_device=/dev/watchdog").watchdog_device, "/dev/watchdog");
        let bad = [
            "cairn.watchdog_device=/tmp/x",
            "cairn.watchdog_device=/dev/",
            "cairn.watchdog_device=/dev/../proc/x",
            "cairn.watchdog_device=/dev//x",
            "cairn.watchdog_device=dev/watchdog0",
        ];
        let c = parse(&bad.join(" "));
        assert_eq!(c.watchdog_device, "/dev/watchdog0");
        assert_eq!(c.ignored, bad);
    }

    #[cfg(feature = "test-hooks")]
    #[test]
    fn the_hang_hook_parses_in_test_builds() {
        assert_eq!(parse("cairn.test.hang=supervisor").test_hang, Some(TestHang::Supervisor));
        assert_eq!(parse("cairn.test.hang=trial").test_hang, Some(TestHang::Trial));
        assert_eq!(parse("cairn.test.hang=entry-name").test_hang, Some(TestHang::EntryName));
        let c = parse("cairn.test.hang=elsewhere");
        assert_eq!(c.test_hang, None);
        assert_eq!(c.ignored, ["cairn.test.hang=elsewhere"]);
    }

    #[cfg(not(feature = "test-hooks"))]
    #[test]
    fn production_builds_know_no_hang_hook() {
        assert_eq!(parse("cairn.test.hang=supervisor").ignored, ["cairn.test.hang=supervisor"]);
    }
}
