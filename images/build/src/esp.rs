//! The EFI system partition: a FAT32 file system, written deterministically.
//!
//! What goes on it is [`EspContents`]: systemd-boot at the removable-media
//! path (`EFI/BOOT/BOOTX64.EFI`, `BOOTAA64.EFI`: firmware finds it with no
//! boot variables), `loader/loader.conf`, and one unified kernel image per
//! boot slot in `EFI/Linux/` named by [`cairn_format::bootentry`]. The
//! volume ID and every timestamp are fixed, files are written in path
//! order, so the same contents give the same bytes.

use cairn_format::bootentry::{self, Entry};

use crate::fat::{self, FatError};

/// Why the partition could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// Writing the FAT file system.
    #[error("the EFI system partition: {0}")]
    Fat(#[from] FatError),
}

/// UEFI architectures cairn boards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EfiArch {
    /// x86_64.
    X64,
    /// arm64.
    Aa64,
}

impl EfiArch {
    /// The removable-media boot path.
    pub fn boot_path(self) -> &'static str {
        match self {
            EfiArch::X64 => "EFI/BOOT/BOOTX64.EFI",
            EfiArch::Aa64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// The architecture named by its suffix (`x64`, `aa64`).
    pub fn from_suffix(s: &str) -> Option<EfiArch> {
        match s {
            "x64" => Some(EfiArch::X64),
            "aa64" => Some(EfiArch::Aa64),
            _ => None,
        }
    }

    /// The suffix Debian's systemd-boot files carry (`systemd-boot<suffix>.efi`,
    /// `linux<suffix>.efi.stub`).
    pub fn suffix(self) -> &'static str {
        match self {
            EfiArch::X64 => "x64",
            EfiArch::Aa64 => "aa64",
        }
    }
}

/// The loader configuration: no menu unless a key is held, no command-line
/// editor (it would bypass the signed command line), no automatic entries
/// (the firmware's own, other operating systems): only cairn's slots boot.
pub const LOADER_CONF: &str = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n";

/// [`LOADER_CONF`] for a factory image that enrolls its Secure Boot keys:
/// a firmware in setup mode gets `loader/keys/auto/{db,KEK,PK}.auth`
/// written at the first boot (systemd-boot 252's `secure-boot-enroll`).
pub const LOADER_CONF_ENROLL: &str = concat!(
    "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n",
    "secure-boot-enroll force\n"
);

/// Where systemd-boot looks for the keys it enrolls by itself.
pub const AUTO_KEYS_DIR: &str = "loader/keys/auto";

/// One boot slot's image.
#[derive(Debug, Clone)]
pub struct SlotImage {
    /// Its entry (slot and counter).
    pub entry: Entry,
    /// The unified kernel image.
    pub uki: Vec<u8>,
}

/// What the partition holds.
#[derive(Debug, Clone)]
pub struct EspContents {
    /// Architecture.
    pub arch: EfiArch,
    /// systemd-boot.
    pub loader: Vec<u8>,
    /// The slots' images.
    pub slots: Vec<SlotImage>,
    /// More files (path, bytes), e.g. Secure Boot keys for enrollment.
    pub extra: Vec<(String, Vec<u8>)>,
}

impl EspContents {
    /// Sign the loader and every slot image for Secure Boot (Authenticode,
    /// [`crate::secureboot::sign_pe`]): firmware with `key`'s certificate
    /// in `db` starts the loader, the loader (through the firmware's
    /// checks) the slot images, and nothing else.
    pub fn sign(&mut self, key: &crate::secureboot::SbKey) -> Result<(), crate::secureboot::SignError> {
        self.loader = crate::secureboot::sign_pe(&self.loader, key)?;
        for s in &mut self.slots {
            s.uki = crate::secureboot::sign_pe(&s.uki, key)?;
        }
        Ok(())
    }

    /// Put `key`'s PK, KEK and db enrollment files on the ESP and have
    /// systemd-boot enroll them when the firmware is in setup mode (a new
    /// board): the factory way to make a device enforce Secure Boot with
    /// the vendor's key. A firmware already in user mode ignores them.
    pub fn enroll_keys(&mut self, key: &crate::secureboot::SbKey) -> Result<(), crate::secureboot::AuthError> {
        use crate::secureboot::siglist::CAIRN_OWNER;
        use crate::secureboot::{auth_files, EfiTime};
        let a = auth_files(key, CAIRN_OWNER, EfiTime::CAIRN_DEFAULT)?;
        for (name, data) in [("PK", a.pk), ("KEK", a.kek), ("db", a.db)] {
            self.extra.push((format!("{AUTO_KEYS_DIR}/{name}.auth"), data));
        }
        Ok(())
    }

    /// Every file, by path.
    pub fn files(&self) -> Vec<(String, &[u8])> {
        let enroll = self.extra.iter().any(|(p, _)| p.starts_with(AUTO_KEYS_DIR));
        let conf = if enroll { LOADER_CONF_ENROLL } else { LOADER_CONF };
        let mut files: Vec<(String, &[u8])> =
            vec![(self.arch.boot_path().to_owned(), &self.loader), ("loader/loader.conf".to_owned(), conf.as_bytes())];
        for s in &self.slots {
            files.push((format!("{}/{}", bootentry::DIR, s.entry.file_name()), &s.uki));
        }
        for (p, d) in &self.extra {
            files.push((p.clone(), d));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files
    }
}

/// Volume label.
pub const LABEL: &[u8; 11] = b"CAIRN-ESP  ";
/// Volume ID (serial number): fixed, as the rest of the disk.
pub const VOLUME_ID: u32 = 0xCA12_0E5F;

/// The partition's bytes for a partition of `size` bytes, up to the last
/// used cluster (the disk writer leaves the rest zero, and sparse).
pub fn build(contents: &EspContents, size: u64) -> Result<Vec<u8>, EspError> {
    fat::write(&contents.files(), size, VOLUME_ID, LABEL).map_err(EspError::Fat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::bootstate::Slot;
    use std::io::{Cursor, Read};

    pub(crate) fn contents() -> EspContents {
        EspContents {
            arch: EfiArch::X64,
            loader: b"MZ loader".to_vec(),
            slots: vec![
                SlotImage { entry: Entry::blessed(Slot::A), uki: vec![0xa5; 300_000] },
                SlotImage { entry: Entry::trial(Slot::B, 3), uki: vec![0x5b; 5000] },
            ],
            extra: vec![],
        }
    }

    fn read(img: &[u8], size: u64, path: &str) -> Vec<u8> {
        let mut full = img.to_vec();
        full.resize(size as usize, 0);
        let fs = fatfs::FileSystem::new(Cursor::new(full), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let mut out = Vec::new();
        fs.root_dir().open_file(path).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn the_partition_holds_loader_conf_and_slots_and_is_reproducible() {
        let size = 64 << 20;
        let img = build(&contents(), size).unwrap();
        assert!(img.len() < 2 << 20, "trailing zeroes are cut: {}", img.len());
        assert_eq!(read(&img, size, "EFI/BOOT/BOOTX64.EFI"), b"MZ loader");
        assert_eq!(read(&img, size, "loader/loader.conf"), LOADER_CONF.as_bytes());
        assert_eq!(read(&img, size, "EFI/Linux/cairn-a.efi"), vec![0xa5; 300_000]);
        assert_eq!(read(&img, size, "EFI/Linux/cairn-b+3.efi"), vec![0x5b; 5000]);
        assert_eq!(build(&contents(), size).unwrap(), img);
    }

    #[test]
    fn enrolling_keys_adds_the_auth_files_and_the_loader_setting() {
        let key = crate::secureboot::SbKey::generate("esp test", 1).unwrap();
        let mut c = contents();
        assert!(!c.files().iter().any(|(p, _)| p.starts_with(AUTO_KEYS_DIR)));
        c.enroll_keys(&key).unwrap();
        let files = c.files();
        let conf = files.iter().find(|(p, _)| p == "loader/loader.conf").map(|(_, d)| *d).unwrap();
        assert!(std::str::from_utf8(conf).unwrap().ends_with("secure-boot-enroll force\n"));
        for name in ["PK", "KEK", "db"] {
            let path = format!("{AUTO_KEYS_DIR}/{name}.auth");
            assert!(files.iter().any(|(p, d)| *p == path && !d.is_empty()), "{path}");
        }
        build(&c, 64 << 20).unwrap();
    }

    #[test]
    fn too_small_and_bad_paths_are_refused() {
        let mut c = contents();
        c.slots[0].uki = vec![1; 40 << 20];
        assert!(matches!(build(&c, 36 << 20), Err(EspError::Fat(FatError::Full { .. }))));
        let mut c = contents();
        c.extra.push(("loader/../x".into(), vec![]));
        assert!(matches!(build(&c, 64 << 20), Err(EspError::Fat(FatError::BadPath(_)))));
    }

    #[test]
    fn linux_and_mtools_read_it() {
        // `mdir` (mtools) reads the image as a separate implementation.
        let size = 64 << 20;
        let mut img = build(&contents(), size).unwrap();
        img.resize(size as usize, 0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("esp.img");
        std::fs::write(&p, &img).unwrap();
        let Ok(out) = std::process::Command::new("mdir").arg("-i").arg(&p).arg("::/EFI/Linux").output() else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("cairn-b+3.efi"), "{text}");
        let fsck = std::process::Command::new("fsck.vfat").arg("-n").arg(&p).output();
        if let Ok(o) = fsck {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        }
    }
}
