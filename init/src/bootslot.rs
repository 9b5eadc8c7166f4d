//! The boot slot this init was started from: which one (`cairn.slot=` in
//! the slot image's signed command line), what the loader said (its EFI
//! variables), the slot's entry on the EFI system partition (blessed, or on
//! trial with tries left), and blessing it once the device is healthy.
//!
//! The ESP is mounted only for as long as it is read or renamed, so a
//! power cut almost never finds it mounted; a rename on FAT is one
//! directory entry update, and the old or the new name survives it.
//!
//! The installer writes a bundle's boot image here too ([`EntryWriter`]):
//! into the entry this boot did not start from, under a name the loader
//! ignores until the trial is staged, then renamed to `cairn-X+N.efi`. A
//! boot that finds a staged trial's image still unnamed names it
//! ([`finish_pending`]) and restarts.

use cairn_format::bootentry::{self, Assessment, Entry, FindError};
use cairn_format::bootstate::Slot;
use cairn_runtime::sys::{self, SysError};

use crate::event::event;
use crate::partitions::{self, Guid, Partitions};

/// Where the ESP is mounted while it is used.
const ESP_DIR: &str = "/run/cairn/esp";
/// Where the installer child mounts it: apart from PID 1's, so neither
/// unmounts the other's.
const UPDATE_DIR: &str = "/run/cairn/esp-update";
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
/// Its module is loaded here, only then ([`crate::modules::EFI_ORDER`]).
pub fn mount_efivars() -> bool {
    if !std::path::Path::new("/sys/firmware/efi").exists() {
        return false;
    }
    if std::path::Path::new(crate::modules::EFI_ORDER).exists() {
        crate::modules::load_list(crate::modules::EFI_ORDER);
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

/// The entry this boot came from: the loader's word (`LoaderEntrySelected`)
/// first, since an image written by an update is the same whichever entry
/// it lands in, else the slot image's own `cairn.slot=` (a factory image
/// started without systemd-boot's variables).
pub fn booted_slot(cmdline_slot: Option<Slot>, loader: &LoaderInfo) -> Option<Slot> {
    slot_by_loader(loader).or(cmdline_slot)
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
    /// Entries whose new image an install left under its pending name.
    pub pending: Vec<Slot>,
}

impl BootSlot {
    /// Whether the slot is on trial (counting tries, or out of them).
    pub fn on_trial(&self) -> bool {
        self.entry.assessment() != Assessment::Blessed
    }
}

fn mount_esp(dev: &str) -> Result<(), SysError> {
    mount_esp_at(dev, ESP_DIR)
}

fn mount_esp_at(dev: &str, dir: &str) -> Result<(), SysError> {
    sys::mkdir_all(dir, 0o700)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME;
    sys::mount("cairn-esp", Some(dev), dir, Some("vfat"), flags, Some("umask=0077"))
}

fn unmount_esp() {
    unmount_esp_at(ESP_DIR);
}

fn unmount_esp_at(dir: &str) {
    if let Err(e) = sys::umount(dir, 0) {
        event("esp.unmount-failed").kv("error", e).emit();
    }
}

/// The file names in the ESP's entry directory (mounted at `dir`).
fn entry_names(dir: &str) -> Vec<String> {
    entry_names_in(&format!("{dir}/{}", bootentry::DIR))
}

/// The entries among `names` whose pending image is there.
fn pending_of(names: &[String]) -> Vec<Slot> {
    [Slot::A, Slot::B].into_iter().filter(|s| names.iter().any(|n| *n == bootentry::pending_name(*s))).collect()
}

/// `syncfs` of the file system holding `dir`.
fn sync_dir(dir: &str) -> Result<(), SysError> {
    let d = sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
    nix::unistd::syncfs(&d).map_err(sys::err("syncfs", dir))
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
    let names = entry_names(ESP_DIR);
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
    let pending = pending_of(&names);
    Some(BootSlot { slot, esp: esp.clone(), file, entry, pending })
}

/// The booted entry as it is named now (blessed since boot, say), read
/// again without an event: for an installer forked long after the boot.
pub fn reread(b: &BootSlot) -> Result<BootSlot, String> {
    mount_esp_at(&b.esp, UPDATE_DIR).map_err(|e| format!("mounting {}: {e}", b.esp))?;
    let names = entry_names(UPDATE_DIR);
    unmount_esp_at(UPDATE_DIR);
    let (file, entry) = bootentry::find(names.iter().map(String::as_str), b.slot)
        .map(|(f, e)| (f.to_owned(), e))
        .map_err(|e| format!("entry {}: {e:?}", b.slot))?;
    Ok(BootSlot { slot: b.slot, esp: b.esp.clone(), file, entry, pending: pending_of(&names) })
}

/// Name the staged image of entry `slot` (left under its pending name by a
/// power cut after the stage write): `cairn-X+tries.efi`, synced. Any
/// other file of that entry is removed first (the install removed it before
/// writing; a cut may have kept it).
pub fn finish_pending(esp: &str, slot: Slot, tries: u8) -> Result<String, String> {
    mount_esp(esp).map_err(|e| format!("mounting {esp}: {e}"))?;
    let result = name_image(ESP_DIR, slot, tries);
    unmount_esp();
    result.map_err(|e| e.to_string())
}

/// Remove entry `slot`'s files (any counter), then rename its pending
/// image to the entry name with `tries`, and sync: the file name.
fn name_image(dir: &str, slot: Slot, tries: u8) -> Result<String, SysError> {
    let entries = format!("{dir}/{}", bootentry::DIR);
    remove_entry_files(&entries, slot)?;
    let name = Entry::trial(slot, u32::from(tries)).file_name();
    let (from, to) = (format!("{entries}/{}", bootentry::pending_name(slot)), format!("{entries}/{name}"));
    nix::fcntl::renameat(nix::fcntl::AT_FDCWD, from.as_str(), nix::fcntl::AT_FDCWD, to.as_str())
        .map_err(sys::err("rename", &from))?;
    sync_dir(&entries)?;
    Ok(name)
}

/// Remove every file of entry `slot` in `entries` (its name with any
/// counter), never another entry's.
fn remove_entry_files(entries: &str, slot: Slot) -> Result<(), SysError> {
    for n in entry_names_in(entries) {
        if Entry::parse(&n).is_some_and(|e| e.slot == slot) {
            let path = format!("{entries}/{n}");
            std::fs::remove_file(&path).map_err(|e| sys::SysError {
                op: "unlink",
                arg: path.clone(),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })?;
        }
    }
    Ok(())
}

/// The file names in `entries`.
fn entry_names_in(entries: &str) -> Vec<String> {
    std::fs::read_dir(entries)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The installer's hold on the ESP while it writes a boot image: mounted
/// at its own directory from [`EntryWriter::begin`] until dropped.
pub struct EntryWriter {
    mounted: bool,
}

impl EntryWriter {
    /// Mount the ESP (`esp`, its device), remove entry `slot`'s files and
    /// any pending image of it, and create that pending image empty: its
    /// path, to write. Never called for the booted entry (the pure install
    /// picks the other one).
    pub fn begin(esp: &str, slot: Slot) -> Result<(EntryWriter, String), SysError> {
        mount_esp_at(esp, UPDATE_DIR)?;
        let w = EntryWriter { mounted: true };
        let entries = format!("{UPDATE_DIR}/{}", bootentry::DIR);
        remove_entry_files(&entries, slot)?;
        let path = format!("{entries}/{}", bootentry::pending_name(slot));
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        drop(sys::open(&path, flags)?);
        sync_dir(&entries)?;
        Ok((w, path))
    }

    /// Name the written image entry `slot` on trial with `tries`, sync,
    /// unmount: the entry's file name.
    pub fn finish(mut self, slot: Slot, tries: u8) -> Result<String, SysError> {
        let name = name_image(UPDATE_DIR, slot, tries)?;
        self.mounted = false;
        unmount_esp_at(UPDATE_DIR);
        Ok(name)
    }
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        if self.mounted {
            unmount_esp_at(UPDATE_DIR);
        }
    }
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
