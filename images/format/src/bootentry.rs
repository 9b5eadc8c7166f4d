//! Boot entries on the EFI system partition and their boot counters.
//!
//! Each system slot boots from one unified kernel image (kernel, initramfs
//! and command line in one signed PE) at `EFI/Linux/cairn-<slot>.efi`.
//! A slot on trial carries systemd-boot's counter in its file name:
//! `cairn-b+3.efi` has three tries left; before starting it the loader
//! renames it to `cairn-b+2-1.efi` (two left, one done), and so on. An entry
//! at `+0-N` is bad: the loader sorts it last, so the other slot boots. The
//! init blesses the slot it booted, once the device is healthy, by renaming
//! it to `cairn-<slot>.efi` (no counter: never counted again).
//! (systemd's "Automatic Boot Assessment"; the loader's side is in
//! systemd-boot, this module is the init's and the image builder's side.)

use alloc::format;
use alloc::string::String;

use crate::bootstate::Slot;

/// Directory of the entries on the ESP (systemd-boot's "Type #2" entries).
pub const DIR: &str = "EFI/Linux";
/// File name prefix of every cairn entry.
pub const PREFIX: &str = "cairn-";
/// File name suffix.
pub const SUFFIX: &str = ".efi";
/// Tries a newly written slot gets.
pub const DEFAULT_TRIES: u32 = 3;

/// The name an installer writes a slot's new image under, in [`DIR`],
/// until the trial it belongs to is staged: it starts with a dot and does
/// not end in `.efi`, so neither systemd-boot nor [`find`] takes it for an
/// entry (a power cut before the stage leaves nothing the loader starts).
pub fn pending_name(slot: Slot) -> String {
    format!(".{PREFIX}{slot}.new")
}

/// A boot entry's file name, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The slot it boots.
    pub slot: Slot,
    /// Its counter; `None` for a blessed entry.
    pub counter: Option<Counter>,
}

/// A boot counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Tries left.
    pub left: u32,
    /// Tries done.
    pub done: u32,
}

/// What an entry's name says about the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assessment {
    /// No counter: known good.
    Blessed,
    /// Counting, tries left.
    Trial {
        /// Tries left.
        left: u32,
    },
    /// Counting, none left: the loader boots it only when nothing else is left.
    Bad,
}

impl Assessment {
    /// Word for events.
    pub fn as_str(self) -> &'static str {
        match self {
            Assessment::Blessed => "blessed",
            Assessment::Trial { .. } => "trial",
            Assessment::Bad => "bad",
        }
    }
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn slot_of(s: &str) -> Option<Slot> {
    match s {
        "a" => Some(Slot::A),
        "b" => Some(Slot::B),
        _ => None,
    }
}

impl Entry {
    /// A new entry on trial with `tries` tries.
    pub fn trial(slot: Slot, tries: u32) -> Entry {
        Entry { slot, counter: Some(Counter { left: tries, done: 0 }) }
    }

    /// A blessed entry.
    pub fn blessed(slot: Slot) -> Entry {
        Entry { slot, counter: None }
    }

    /// Parse a file name (no directory): `cairn-a.efi`, `cairn-b+3.efi`,
    /// `cairn-b+2-1.efi`. The suffix is matched without regard to case (FAT
    /// names are case-insensitive); anything else is `None`.
    pub fn parse(name: &str) -> Option<Entry> {
        let cut = name.len().checked_sub(SUFFIX.len())?;
        let (stem, suffix) = (name.get(..cut)?, name.get(cut..)?);
        if !suffix.eq_ignore_ascii_case(SUFFIX) {
            return None;
        }
        let rest = stem.strip_prefix(PREFIX)?;
        let (slot, counter) = match rest.split_once('+') {
            None => (rest, None),
            Some((slot, count)) => {
                let counter = match count.split_once('-') {
                    None => Counter { left: number(count)?, done: 0 },
                    Some((left, done)) => Counter { left: number(left)?, done: number(done)? },
                };
                (slot, Some(counter))
            }
        };
        Some(Entry { slot: slot_of(slot)?, counter })
    }

    /// The file name: `cairn-<slot>[+LEFT[-DONE]].efi`.
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{PREFIX}{}{SUFFIX}", self.slot),
            Some(Counter { left, done: 0 }) => format!("{PREFIX}{}+{left}{SUFFIX}", self.slot),
            Some(Counter { left, done }) => format!("{PREFIX}{}+{left}-{done}{SUFFIX}", self.slot),
        }
    }

    /// What the name says.
    pub fn assessment(&self) -> Assessment {
        match self.counter {
            None => Assessment::Blessed,
            Some(Counter { left: 0, .. }) => Assessment::Bad,
            Some(Counter { left, .. }) => Assessment::Trial { left },
        }
    }
}

/// Why the booted slot's entry could not be found among the ESP's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindError {
    /// No entry for the slot.
    Missing,
    /// More than one file names the slot (e.g. a crash between writing a new
    /// entry and removing the old): nothing is renamed.
    Several(String, String),
}

/// The one entry among `names` (file names in [`DIR`]) for `slot`.
pub fn find<'a>(names: impl IntoIterator<Item = &'a str>, slot: Slot) -> Result<(&'a str, Entry), FindError> {
    let mut found: Option<(&'a str, Entry)> = None;
    for n in names {
        let Some(e) = Entry::parse(n) else { continue };
        if e.slot != slot {
            continue;
        }
        if let Some((first, _)) = found {
            return Err(FindError::Several(first.into(), n.into()));
        }
        found = Some((n, e));
    }
    found.ok_or(FindError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (name, slot, counter) in [
            ("cairn-a.efi", Slot::A, None),
            ("cairn-b+3.efi", Slot::B, Some(Counter { left: 3, done: 0 })),
            ("cairn-b+2-1.efi", Slot::B, Some(Counter { left: 2, done: 1 })),
            ("cairn-a+0-3.efi", Slot::A, Some(Counter { left: 0, done: 3 })),
        ] {
            let e = Entry::parse(name).unwrap();
            assert_eq!(e, Entry { slot, counter }, "{name}");
            assert_eq!(e.file_name(), name);
        }
        assert_eq!(Entry::parse("CAIRN-A.EFI"), None, "the stem is case-sensitive");
        assert_eq!(Entry::parse("cairn-a.EFI").unwrap().slot, Slot::A);
        for bad in [
            "cairn-c.efi",
            "cairn-a+.efi",
            "cairn-a+x.efi",
            "cairn-a+1-.efi",
            "cairn-a+-1.efi",
            "cairn-a",
            "a.efi",
            "cairn-a+1-2-3.efi",
            "cairn-a+9999999999.efi",
        ] {
            assert_eq!(Entry::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn assessment_follows_the_counter() {
        assert_eq!(Entry::blessed(Slot::A).assessment(), Assessment::Blessed);
        assert_eq!(Entry::trial(Slot::B, 3).assessment(), Assessment::Trial { left: 3 });
        assert_eq!(Entry::parse("cairn-b+0-3.efi").unwrap().assessment(), Assessment::Bad);
        assert_eq!(Entry::trial(Slot::B, 3).file_name(), "cairn-b+3.efi");
    }

    #[test]
    fn the_booted_slot_has_exactly_one_entry() {
        let names = ["cairn-a.efi", "cairn-b+1-2.efi", "other.efi"];
        assert_eq!(find(names, Slot::B).unwrap(), ("cairn-b+1-2.efi", Entry::parse("cairn-b+1-2.efi").unwrap()));
        assert_eq!(find(["cairn-a.efi"], Slot::B), Err(FindError::Missing));
        assert_eq!(
            find(["cairn-b.efi", "cairn-b+3.efi"], Slot::B),
            Err(FindError::Several("cairn-b.efi".into(), "cairn-b+3.efi".into()))
        );
    }
}
