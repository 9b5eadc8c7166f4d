//! The boot slot this init was started from: which one (`cairn.slot=` in
//! the slot image's signed command line), what the loader said (its EFI
//! variables), the slot's entry on the EFI system partition (blessed, or on
//! trial with tries left), and blessing it once the device is healthy.
//!
//! The ESP is mounted only for as long as it is read or renamed, so a
//! power cut almost never finds it mounted; a rename on FAT is one
//! directory entry update, and the old or the new name survives it.

use cairn_format::bootentry::{self, Assessment, Entry, FindError};
use cairn_format::bootstate::Slot;
use cairn_runtime::sys::{self, SysError};

use crate::event::event;
use crate::partitions::{self, Guid, Partitions};

/// Where the ESP is mounted while it is used.
const ESP_DIR: &str = "/run/cairn/esp";
/// efivarfs.
const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// systemd's boot loader interface vendor GUID.
const LOADER_VENDOR: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// UEFI's global variable GUID (`SecureBoot`).
const GLOBAL_VENDOR: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Read a loader variable (UTF-16LE after the 4-byte attributes) as text:
/// ASCII only (GUIDs, entry file names, the loader's name); `None` for
/// anything else.
fn loader_var(name: &str) -> Option<String> {
    let raw = std::fs::read(format!("{EFIVARS}/{name}-{LOADER_VENDOR}")).ok()?;
    let mut text = String::new();
    for c in raw.get(4..)?.chunks_exact(2) {
        match c {
            [0, 0] => break,
            [b, 0] if b.is_ascii() && !b.is_ascii_control() => text.push(char::from(*b)),
            _ => return None,
        }
    }
    Some(text)
}

/// Mount efivarfs read-only if the firmware is UEFI (`/sys/firmware/efi`).
/// Nothing here writes a variable.
pub fn mount_efivars() -> bool {
    if !std::path::Path::new("/sys/firmware/efi").exists() {
        return false;
    }
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    match sys::mount("efivarfs", Some("efivarfs"), EFIVARS, Some("efivarfs"), flags, None) {
        Ok(()) => true,
        Err(e) if e.errno == libc::EBUSY => true,
        Err(e) => {
            event("efivars.unavailable").kv("error", e).emit();
            false
        }
    }
}

/// What the boot loader says about this boot.
#[derive(Debug, Clone, Default)]
pub struct LoaderInfo {
    /// `LoaderDevicePartUUID`: the ESP the loader was started from.
    pub esp: Option<Guid>,
    /// `LoaderEntrySelected`: the entry it started (id, counter stripped).
    pub entry: Option<String>,
    /// `LoaderInfo`: the loader's name and version.
    pub loader: Option<String>,
    /// The firmware's `SecureBoot` variable: whether it enforced signatures
    /// on the loader and the slot image.
    pub secure_boot: Option<bool>,
}

/// Read the loader's variables (after [`mount_efivars`]).
pub fn loader_info() -> LoaderInfo {
    LoaderInfo {
        esp: loader_var("LoaderDevicePartUUID").and_then(|t| partitions::parse_guid(t.trim())),
        entry: loader_var("LoaderEntrySelected"),
        loader: loader_var("LoaderInfo"),
        secure_boot: std::fs::read(format!("{EFIVARS}/SecureBoot-{GLOBAL_VENDOR}"))
            .ok()
            .and_then(|v| v.get(4).map(|b| *b == 1)),
    }
}

/// The slot the loader started, when its entry counted tries: systemd-boot
/// 252 names the entry it started (`LoaderEntrySelected`) by its file name
/// before its rename (`cairn-b+3.efi` for a slot on trial). Used only when
/// the ESP cannot be read (no boot disk found).
pub fn trial_by_loader(loader: &LoaderInfo) -> Option<Slot> {
    let e = Entry::parse(loader.entry.as_deref()?)?;
    (e.assessment() != Assessment::Blessed).then_some(e.slot)
}

/// The slot of the entry the loader started, whatever its counter.
pub fn slot_by_loader(loader: &LoaderInfo) -> Option<Slot> {
    Entry::parse(loader.entry.as_deref()?).map(|e| e.slot)
}

/// The booted slot's entry on the ESP.
#[derive(Debug, Clone)]
pub struct BootSlot {
    /// The slot.
    pub slot: Slot,
    /// The ESP's device node.
    pub esp: String,
    /// The entry's file name now.
    pub file: String,
    /// The entry, parsed.
    pub entry: Entry,
}

impl BootSlot {
    /// Whether the slot is on trial (counting tries, or out of them).
    pub fn on_trial(&self) -> bool {
        self.entry.assessment() != Assessment::Blessed
    }
}

fn mount_esp(dev: &str) -> Result<(), SysError> {
    sys::mkdir_all(ESP_DIR, 0o700)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME;
    sys::mount("cairn-esp", Some(dev), ESP_DIR, Some("vfat"), flags, Some("umask=0077"))
}

fn unmount_esp() {
    if let Err(e) = sys::umount(ESP_DIR, 0) {
        event("esp.unmount-failed").kv("error", e).emit();
    }
}

/// Find the booted slot's entry: one `boot.slot` event saying which slot,
/// its state and tries left, and what the loader said.
pub fn inspect(slot: Option<Slot>, parts: &Partitions, loader: &LoaderInfo) -> Option<BootSlot> {
    let Some(slot) = slot else {
        event("boot.slot")
            .kv("slot", "none")
            .kv("reason", "no cairn.slot= on the command line: started without a boot slot image")
            .emit();
        return None;
    };
    let fail = |reason: String| {
        event("boot.slot").kv("slot", slot).kv("state", "unknown").kv("reason", reason).emit();
        None
    };
    let Some(esp) = parts.get(crate::partitions::ESP) else {
        return fail("the boot disk has no cairn-esp partition".into());
    };
    if let Err(e) = mount_esp(esp) {
        return fail(format!("mounting {esp}: {e}"));
    }
    let names: Vec<String> = std::fs::read_dir(format!("{ESP_DIR}/{}", bootentry::DIR))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    unmount_esp();
    let found = bootentry::find(names.iter().map(String::as_str), slot);
    let (file, entry) = match found {
        Ok((f, e)) => (f.to_owned(), e),
        Err(FindError::Missing) => return fail(format!("no entry for slot {slot} in {}", bootentry::DIR)),
        Err(FindError::Several(a, b)) => return fail(format!("two entries for slot {slot}: {a} and {b}")),
    };
    let state = entry.assessment();
    let mut e = event("boot.slot").kv("slot", slot).kv("state", state.as_str()).kv("entry", &file);
    if let Some(c) = entry.counter {
        e = e.kv("tries_left", c.left).kv("tries_done", c.done);
    }
    if let Some(l) = &loader.entry {
        e = e.kv("loader_entry", l);
    }
    if let Some(l) = &loader.loader {
        e = e.kv("loader", l);
    }
    if let Some(on) = loader.secure_boot {
        e = e.kv("secure_boot", if on { "on" } else { "off" });
    }
    e.emit();
    Some(BootSlot { slot, esp: esp.clone(), file, entry })
}

/// Bless the slot: rename its entry to drop the counter, and sync.
pub fn bless(b: &mut BootSlot) -> Result<(), String> {
    if !b.on_trial() {
        return Ok(());
    }
    let was = b.file.clone();
    rename_entry(b, Entry::blessed(b.slot))?;
    event("boot.blessed").kv("slot", b.slot).kv("entry", &b.file).kv("was", was).emit();
    Ok(())
}

/// Mark the slot's entry bad (no tries left), so the loader starts it only
/// when nothing else is left: a trial that failed after its entry was
/// blessed, or before its tries ran out.
pub fn mark_bad(b: &mut BootSlot) -> Result<(), String> {
    if b.entry.assessment() == Assessment::Bad {
        return Ok(());
    }
    let done = b.entry.counter.map(|c| c.done).unwrap_or(0);
    let was = b.file.clone();
    rename_entry(b, Entry { slot: b.slot, counter: Some(bootentry::Counter { left: 0, done }) })?;
    event("boot.marked-bad").kv("slot", b.slot).kv("entry", &b.file).kv("was", was).emit();
    Ok(())
}

/// Rename the slot's entry to `to`'s name, sync the ESP.
fn rename_entry(b: &mut BootSlot, to: Entry) -> Result<(), String> {
    let new = to.file_name();
    mount_esp(&b.esp).map_err(|e| format!("mounting {}: {e}", b.esp))?;
    let dir = format!("{ESP_DIR}/{}", bootentry::DIR);
    let (old_path, new_path) = (format!("{dir}/{}", b.file), format!("{dir}/{new}"));
    let result = nix::fcntl::renameat(nix::fcntl::AT_FDCWD, old_path.as_str(), nix::fcntl::AT_FDCWD, new_path.as_str())
        .map_err(sys::err("rename", &old_path))
        .and_then(|()| sys::open(&dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC))
        .and_then(|d| nix::unistd::syncfs(&d).map_err(sys::err("syncfs", &dir)));
    unmount_esp();
    result.map_err(|e| e.to_string())?;
    b.file = new;
    b.entry = to;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_names_a_trial_by_the_entry_it_started() {
        let with = |entry: &str| LoaderInfo { entry: Some(entry.into()), ..LoaderInfo::default() };
        assert_eq!(trial_by_loader(&with("cairn-b+3.efi")), Some(Slot::B));
        assert_eq!(trial_by_loader(&with("cairn-a+0-3.efi")), Some(Slot::A));
        assert_eq!(trial_by_loader(&with("cairn-a.efi")), None, "blessed");
        assert_eq!(trial_by_loader(&with("other.efi")), None);
        assert_eq!(trial_by_loader(&LoaderInfo::default()), None, "no loader");
    }
}
